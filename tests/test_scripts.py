"""Scripts are not notebooks (issue 11, item 7), and the small items of its item 5: one line and
exit 2 for a plain script named on the command line; no "Nothing to fix." beside an error; JSON
errors worded once; `--diff` shows only lines that changed; `run --compare` writes nothing next
to the notebook and says when `--unsafe-fixes` would fix what the fixed copy fails on."""

from __future__ import annotations

import json
import shutil

import pytest

from nbrefactor.celldiff import cell_diff
from nbrefactor.fixer import FixResult
from nbrefactor.notebook.model import notebook_from_cells
from tests.conftest import ROOT, run_cli

SCRIPT = 'import lightning as L\ntrainer = L.Trainer(strategy="ddp")\ntrainer.fit(None)\n'
MESSAGE = "a Python script, not a notebook (no jupytext header or cell markers); script rules come later"


@pytest.mark.parametrize("command", ["check", "fix"])
def test_a_named_script_is_one_error_line_and_exit_2(tmp_path, command):
    p = tmp_path / "train_script.py"
    p.write_text(SCRIPT)
    r = run_cli(command, "train_script.py", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.decode().splitlines() == [f"error: train_script.py: {MESSAGE}"]
    assert b"All checks passed" not in r.stdout and b"Nothing to fix" not in r.stdout
    assert p.read_text() == SCRIPT  # `strategy="ddp"` is right in a script: never rewritten


def test_run_refuses_a_script(tmp_path):
    (tmp_path / "s.py").write_text(SCRIPT)
    r = run_cli("run", "s.py", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.decode().strip() == f"error: s.py: {MESSAGE}"


@pytest.mark.parametrize(
    "text",
    [
        "# %%\n" + SCRIPT,
        "#%%\n" + SCRIPT,
        "# +\n" + SCRIPT + "# -\n",
        "# ---\n# jupyter:\n#   jupytext:\n#     text_representation:\n#       format_name: light\n# ---\n\n" + SCRIPT,
    ],
    ids=["percent", "percent-no-space", "light-markers", "jupytext-header"],
)
def test_jupytext_notebooks_are_still_notebooks(tmp_path, text):
    (tmp_path / "nb.py").write_text(text)
    r = run_cli("check", "nb.py", cwd=tmp_path)
    assert r.returncode == 1 and b"NBR401" in r.stdout


def test_a_script_beside_its_ipynb_is_a_pair_side(tmp_path):
    shutil.copy(ROOT / "examples" / "trainer_bad.ipynb", tmp_path / "nb.ipynb")
    (tmp_path / "nb.py").write_text(SCRIPT)
    r = run_cli("check", "nb.py", cwd=tmp_path)
    assert b"a Python script" not in r.stderr


def test_folders_and_pre_commit_skip_scripts_silently(tmp_path):
    (tmp_path / "train_script.py").write_text(SCRIPT)
    (tmp_path / "nb.py").write_text("# %%\n" + SCRIPT)
    r = run_cli("check", ".", cwd=tmp_path)
    assert r.returncode == 1 and b"nb.py" in r.stdout and b"train_script" not in r.stdout + r.stderr
    for command in ("check", "fix"):
        r = run_cli(command, "--pre-commit", "train_script.py", cwd=tmp_path)
        assert r.returncode == 0 and r.stderr == b"", (command, r.stderr)
    assert (tmp_path / "train_script.py").read_text() == SCRIPT


def test_nothing_to_fix_is_not_said_beside_an_error(tmp_path):
    r = run_cli("fix", "missing.ipynb", cwd=tmp_path)
    assert r.returncode == 2 and b"error: missing.ipynb" in r.stderr
    assert b"Nothing to fix" not in r.stdout + r.stderr


def test_json_errors_say_at_once(tmp_path):
    p = tmp_path / "broken.ipynb"
    p.write_text('{"cells": [\n  {"cell_type": "code", "source": "abc')
    r = run_cli("check", str(p))
    line = r.stderr.decode().strip()
    assert r.returncode == 2 and "Unterminated string starting at line 2 column" in line and "at at" not in line
    (tmp_path / "other.ipynb").write_text('{"cells": [1,]}')
    line = run_cli("check", str(tmp_path / "other.ipynb")).stderr.decode()
    assert " at line 1 column " in line and "at at" not in line


def _result(before: list[str], after: list[str]) -> FixResult:
    b = notebook_from_cells([("code", s) for s in before])
    a = notebook_from_cells([("code", s) for s in after])
    return FixResult(b.path, b.raw, a.raw, before=b, after=a)


def test_diff_shows_only_changed_lines():
    """A cell's last line has no newline; when the fix adds code after it, that line did not
    change and must not show as removed and added."""
    out = cell_diff(_result(["x = 1\nfabric.launch()"], ["x = 1\nfabric.launch()\nprint(x)"]), "nb.ipynb")
    body = [ln for ln in out.splitlines() if not ln.startswith(("---", "+++", "@@"))]
    assert body == [" x = 1", " fabric.launch()", "+print(x)"]


def test_fix_diff_keeps_unchanged_lines_as_context(tmp_path):
    p = tmp_path / "nb.py"
    p.write_text('# %%\nimport lightning as L\nmodel = None\n# %%\ntrainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp")\nprint("done")\n')
    out = run_cli("fix", "--diff", str(p)).stdout.decode().splitlines()
    assert ' print("done")' in out and '-print("done")' not in out
    assert '+trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_notebook")' in out


def test_run_compare_writes_nothing_beside_the_notebook_and_names_unsafe_fixes(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("nbclient")
    shutil.copy(ROOT / "examples" / "trainer_bad.ipynb", tmp_path / "nb.ipynb")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run_cli("run", "nb.ipynb", "--compare", "--accelerator", "cpu", "--devices", "2", "--timeout", "240", cwd=tmp_path)
    out = r.stdout.decode()
    assert r.returncode == 1, out[-2000:]
    assert "note: the fixed copy fails on NBR101 cell 4, which `--unsafe-fixes` would fix: `nbrefactor run nb.ipynb --compare --unsafe-fixes`" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_unsafe_note_only_when_unsafe_fixes_would_help():
    from nbrefactor.launcher.command import unsafe_note

    report = {"verdict": "fail", "failure": {"rule": {"code": "NBR101"}}, "fix": {"unsafe_fixable": []}}
    assert unsafe_note("nb.ipynb", report, True) is None
    report["fix"]["unsafe_fixable"] = [{"code": "NBR201", "cell": 3}]
    assert unsafe_note("nb.ipynb", report, False) == (
        "note: the fixed copy still has findings that `--unsafe-fixes` would fix (NBR201 cell 3): `nbrefactor run nb.ipynb --fix --unsafe-fixes`"
    )
    json.dumps(report)
