"""nbrefactor in CI and pre-commit: the shipped `.pre-commit-hooks.yaml` run by a real
`pre-commit run` (and a real `git commit` through `pre-commit install`) in a throwaway git
repository, and the options hooks and CI use (`--pre-commit`, `--output-format github`,
`--statistics`, `--exit-zero`, `--quiet`).

The repository's hooks are `repo: local` copies of the shipped entries (same ids, file types and
arguments; `language: system` running this checkout's Python), so no network is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

SEED = ROOT / "golden" / "fabric_seed_data" / "input.ipynb"
EXPECTED = ROOT / "golden" / "fabric_seed_data" / "expected.ipynb"
CLEAN = ROOT / "golden" / "fabric_already_safe" / "input.ipynb"
TRAINER = ROOT / "golden" / "trainer_synthetic" / "input.ipynb"


def shipped_hooks() -> list[dict]:
    import yaml

    return yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())


def local_config(extra: list[dict] = (), only: str | None = None) -> str:
    """A .pre-commit-config.yaml with the shipped hooks (or the one with id `only`) as `repo: local`
    hooks of this checkout."""
    import yaml

    hooks = []
    for hook in [h for h in [*shipped_hooks(), *extra] if only in (None, h["id"])]:
        program, _, rest = hook["entry"].partition(" ")
        assert program == "nbrefactor"
        hooks.append(
            {
                "id": hook["id"],
                "name": hook["name"],
                "entry": f"{sys.executable} -m nbrefactor {rest}",
                "language": "system",
                "types_or": hook["types_or"],
                "require_serial": hook["require_serial"],
                **{k: v for k, v in hook.items() if k in ("always_run",)},
            }
        )
    return yaml.safe_dump({"repos": [{"repo": "local", "hooks": hooks}]}, sort_keys=False)


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    pytest.importorskip("pre_commit", reason="pre-commit is not installed")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path / "repo"
    root.mkdir()
    git("init", "-q", cwd=root)
    return root


def pre_commit(root: Path, *args: str) -> subprocess.CompletedProcess:
    git("add", "-A", cwd=root)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PRE_COMMIT_HOME": str(root.parent / "pre-commit-home"), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", "run", "--color", "never", *args],
        cwd=root, capture_output=True, text=True, timeout=120, env=env, check=False,
    )


def test_shipped_hooks_are_well_formed():
    hooks = {h["id"]: h for h in shipped_hooks()}
    assert set(hooks) == {"nbrefactor-check", "nbrefactor-fix", "nbrefactor-export"}
    for hook in hooks.values():
        assert hook["types_or"] == ["jupyter", "python", "markdown"] and hook["require_serial"] is True
        assert hook["entry"].startswith("nbrefactor ") and "--pre-commit" in hook["entry"]


def test_pre_commit_check_fails_on_a_fork_unsafe_notebook_and_fix_rewrites_it(repo):
    (repo / ".pre-commit-config.yaml").write_text(local_config())
    shutil.copy(SEED, repo / "bad.ipynb")
    shutil.copy(CLEAN, repo / "clean.ipynb")
    (repo / "module.py").write_text("import torch\nx = torch.zeros(1).cuda()\n")  # not a notebook: ignored
    (repo / "README.md").write_text("# A repository\n")

    r = pre_commit(repo, "nbrefactor-check", "--all-files")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "bad.ipynb:cell 2:2:11: NBR201 `dataset` (MyDataset) is built in the notebook process" in r.stdout
    assert "clean.ipynb" not in r.stdout and "module.py" not in r.stdout and "README.md" not in r.stdout

    r = pre_commit(repo, "nbrefactor-fix", "--all-files")
    assert r.returncode == 1 and "files were modified by this hook" in r.stdout, r.stdout
    assert (repo / "bad.ipynb").read_text() == EXPECTED.read_text()
    assert (repo / "clean.ipynb").read_bytes() == CLEAN.read_bytes()
    assert (repo / "module.py").read_text() == "import torch\nx = torch.zeros(1).cuda()\n"

    r = pre_commit(repo, "--all-files")
    assert r.returncode == 0, r.stdout
    assert r.stdout.count("Passed") == 3  # export: no notebook has a script, nothing to do


def test_pre_commit_passes_on_a_clean_notebook_and_with_no_matching_files(repo):
    always = {**shipped_hooks()[0], "id": "nbrefactor-check-always", "name": "check, always run", "always_run": True}
    (repo / ".pre-commit-config.yaml").write_text(local_config([always]))
    (repo / "notes.txt").write_text("no notebooks here\n")
    r = pre_commit(repo, "--all-files")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("(no files to check)Skipped") == 3
    assert "check, always run" in r.stdout and "Passed" in r.stdout  # called with no files: exit 0
    shutil.copy(CLEAN, repo / "clean.ipynb")
    r = pre_commit(repo, "--all-files")
    assert r.returncode == 0 and r.stdout.count("Passed") == 4, r.stdout


def test_pre_commit_fix_writes_both_sides_of_a_jupytext_pair_once(repo):
    (repo / ".pre-commit-config.yaml").write_text(local_config())
    shutil.copy(SEED, repo / "nb.ipynb")
    subprocess.run([sys.executable, "-m", "jupytext", "--set-formats", "ipynb,py:percent", "nb.ipynb"], cwd=repo, check=True, capture_output=True)
    r = pre_commit(repo, "nbrefactor-check", "--all-files")
    assert r.returncode == 1 and r.stdout.count("NBR201") == 2, r.stdout  # one notebook, not two
    r = pre_commit(repo, "nbrefactor-fix", "--all-files")
    assert r.returncode == 1 and r.stdout.count(": fixed") == 1, r.stdout
    assert "def train(fabric):\n    # Don't load data" in (repo / "nb.py").read_text()
    sync = subprocess.run([sys.executable, "-m", "jupytext", "--sync", "nb.ipynb"], cwd=repo, capture_output=True, text=True, check=False)
    log = sync.stdout + sync.stderr
    assert "Unchanged nb.ipynb" in log and "Unchanged nb.py" in log, log


def test_export_hook_rewrites_a_stale_script_fails_the_commit_then_passes(repo):
    """`pre-commit install`, then `git commit`: the script in [tool.nbrefactor] export was edited by
    hand, so the hook rewrites it and the commit fails; committed again with the rewritten script,
    it passes. A notebook with no entry is skipped."""
    (repo / ".pre-commit-config.yaml").write_text(local_config(only="nbrefactor-export"))
    (repo / "pyproject.toml").write_text('[tool.nbrefactor]\nexport = {"notebooks/train.ipynb" = "scripts/train.py"}\n')
    (repo / "notebooks").mkdir()
    shutil.copy(TRAINER, repo / "notebooks" / "train.ipynb")
    shutil.copy(SEED, repo / "notebooks" / "explore.ipynb")  # no entry: not exported
    (repo / "scripts").mkdir()
    (repo / "scripts" / "train.py").write_text("# edited by hand\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PRE_COMMIT_HOME": str(repo.parent / "pre-commit-home"), "NO_COLOR": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    subprocess.run([sys.executable, "-m", "pre_commit", "install"], cwd=repo, env=env, check=True, capture_output=True, timeout=120)

    def commit() -> subprocess.CompletedProcess:
        git("add", "-A", cwd=repo)
        return subprocess.run(["git", "commit", "-q", "-m", "train"], cwd=repo, env=env, capture_output=True, text=True, timeout=240, check=False)

    r = commit()
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "scripts/train.py: rewritten, it was out of date with notebooks/train.ipynb" in out, out
    assert "files were modified by this hook" in out and "explore" not in out
    assert (repo / "scripts" / "train.py").read_text().startswith("# Exported by `nbrefactor export` from notebooks/train.ipynb")
    r = commit()
    assert r.returncode == 0 and "nbrefactor export" in r.stdout + r.stderr and "Passed" in r.stdout + r.stderr, r.stdout + r.stderr
    assert subprocess.run(["git", "log", "--oneline"], cwd=repo, capture_output=True, text=True, check=True).stdout.count("train") == 1


def test_export_hook_takes_map_from_args_checks_and_writes_nothing_outside_the_repository(tmp_path):
    root = tmp_path / "repo"
    (root / "nb").mkdir(parents=True)
    shutil.copy(TRAINER, root / "nb" / "train.ipynb")
    (root / "train.py").write_text("# stale\n")
    r = run_cli("export", "--pre-commit", "--check", "--map", "nb/train.ipynb=train.py", "train.py", cwd=root)
    assert r.returncode == 1 and r.stdout.decode().startswith("train.py: out of date with nb/train.ipynb"), r
    assert (root / "train.py").read_text() == "# stale\n"  # --check writes nothing
    r = run_cli("export", "--pre-commit", "--map", "nb/train.ipynb=train.py", "nb/other.ipynb", "README.md", cwd=root)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")  # no entry for the files named
    (tmp_path / "outside").mkdir()
    (root / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    for script in ("../train.py", str(tmp_path / "train.py"), "linked/train.py"):
        r = run_cli("export", "--pre-commit", "--map", f"nb/train.ipynb={script}", "nb/train.ipynb", cwd=root)
        assert r.returncode == 2 and b"is outside the repository" in r.stderr, (script, r)
    (root / "pyproject.toml").write_text('[tool.nbrefactor]\nexport = {"nb/train.ipynb" = {script = "../train.py"}}\n')
    r = run_cli("export", "--pre-commit", "nb/train.ipynb", cwd=root)
    assert r.returncode == 2 and b"is outside the repository" in r.stderr, r
    assert list((tmp_path / "outside").iterdir()) == [] and not (tmp_path / "train.py").exists()


# --- the options hooks and CI use ----------------------------------------------------------------


def test_pre_commit_flag_with_no_files_does_nothing_silently(tmp_path):
    shutil.copy(SEED, tmp_path / "bad.ipynb")  # in the folder, but not named: not looked at
    for command in ("check", "fix", "export"):
        r = run_cli(command, "--pre-commit", cwd=tmp_path)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b""), (command, r)
    assert (tmp_path / "bad.ipynb").read_bytes() == SEED.read_bytes()
    (tmp_path / "pyproject.toml").write_text('[tool.nbrefactor]\nexclude = ["bad.ipynb"]\n')
    r = run_cli("check", "--pre-commit", "bad.ipynb", cwd=tmp_path)
    assert r.returncode == 0 and b"NBR201" not in r.stdout  # exclude applies to named files


def test_github_annotations_carry_the_cell_for_ipynb_and_text_notebooks(tmp_path):
    import jupytext as jt

    shutil.copy(SEED, tmp_path / "nb.ipynb")
    jt.write(jt.read(SEED), tmp_path / "nb.py", fmt="py:percent")
    r = run_cli("check", "--output-format", "github", "nb.ipynb", "nb.py", cwd=tmp_path)
    lines = r.stdout.decode().splitlines()
    assert r.returncode == 1 and len(lines) == 4
    for name in ("nb.ipynb", "nb.py"):
        assert f"::error title=nbrefactor (NBR201) cell 2,file={name},line=2,col=11,endLine=2,endColumn=29::{name}:cell 2:2:11: NBR201" in r.stdout.decode()


def test_statistics_counts_findings_per_rule(tmp_path):
    nb = json.loads(SEED.read_text())
    nb["cells"].append({"cell_type": "code", "execution_count": None, "id": "x", "metadata": {}, "outputs": [],
                        "source": "import lightning as L\ntrainer = L.Trainer(strategy='ddp', devices=2)"})
    (tmp_path / "a.ipynb").write_text(json.dumps(nb, indent=1))
    shutil.copy(SEED, tmp_path / "b.ipynb")
    r = run_cli("check", "--statistics", ".", cwd=tmp_path)
    out = r.stdout.decode().splitlines()
    assert r.returncode == 1
    # [*]: plain `fix` fixes them (the labels come from the fixer, not from the rule's kind)
    assert out[:2] == ["4\tNBR201\t[*] data-built-in-notebook-process", "1\tNBR401\t[*] strategy-not-notebook-compatible"]
    assert out[2].startswith("Found 5 findings in 2 notebooks")
    r = run_cli("check", "--statistics", "--output-format", "json", ".", cwd=tmp_path)
    assert json.loads(r.stdout)[0] == {"code": "NBR201", "name": "data-built-in-notebook-process", "count": 4, "fixable": True,
                                         "fix": {"safe": 4, "unsafe": 0, "option": 0, "none": 0}}
    r = run_cli("check", "--statistics", "-q", "--exit-zero", ".", cwd=tmp_path)
    assert r.returncode == 0 and len(r.stdout.decode().splitlines()) == 2


def test_fix_exit_zero_and_quiet(tmp_path):
    p = tmp_path / "explore.ipynb"
    shutil.copy(ROOT / "golden" / "fabric_exploration" / "input.ipynb", p)
    r = run_cli("fix", "explore.ipynb", cwd=tmp_path)
    assert r.returncode == 1 and b"NBR201" in r.stdout  # findings remain without --unsafe-fixes
    r = run_cli("fix", "--exit-zero", "-q", "explore.ipynb", cwd=tmp_path)
    assert r.returncode == 0 and b"NBR201" in r.stdout and b"remain" not in r.stdout
    r = run_cli("fix", "--check", "--exit-zero", "--unsafe-fixes", "explore.ipynb", cwd=tmp_path)
    assert r.returncode == 0 and b"would fix" in r.stdout
