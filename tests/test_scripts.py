"""Scripts are not notebooks (issue 11, item 7; issue 16): a plain script is checked and fixed as a
script (one cell, `path:row:col`, the rules for scripts), folders take scripts only with
`--include-scripts`; and the small items of issue 11's item 5: no "Nothing to fix." beside an
error; JSON errors worded once; `--diff` shows only lines that changed; `run --compare` writes
nothing next to the notebook and says when `--unsafe-fixes` would fix what the fixed copy fails
on."""

from __future__ import annotations

import json
import shutil

import pytest

from nbrefactor.celldiff import cell_diff
from nbrefactor.discover import SCRIPT_MESSAGE as MESSAGE
from nbrefactor.fixer import FixResult
from nbrefactor.notebook.model import notebook_from_cells
from tests.conftest import ROOT, run_cli

SCRIPT = 'import lightning as L\ntrainer = L.Trainer(strategy="ddp")\ntrainer.fit(None)\n'
NOTEBOOK_LAUNCH = 'import lightning as L\n\nmodel = None\ntrainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")\ntrainer.fit(model)\n'
FORKING_NOTEBOOK = '# %%\nimport lightning as L\ntrainer = L.Trainer(accelerator="gpu", devices=2, strategy="ddp_notebook")\n'
RIGHT_IN_A_SCRIPT = """import lightning as L
import torch

model = torch.nn.Linear(2, 2).cuda()
fabric = L.Fabric(accelerator="cuda", devices=2, strategy="ddp")
fabric.launch()
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp")
trainer.fit(model)
"""


@pytest.mark.parametrize("command", ["check", "fix"])
def test_a_named_script_is_checked_as_a_script(tmp_path, command):
    p = tmp_path / "train_script.py"
    p.write_text(SCRIPT)
    r = run_cli(command, "train_script.py", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert r.stdout.decode().strip() == ("All checks passed (1 script)." if command == "check" else "Nothing to fix.")
    assert p.read_text() == SCRIPT  # `strategy="ddp"` is right in a script: never rewritten


def test_ddp_and_fabric_launch_without_a_function_are_right_in_a_script(tmp_path):
    (tmp_path / "train.py").write_text(RIGHT_IN_A_SCRIPT)
    r = run_cli("check", "train.py", cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert r.stdout.decode().strip() == "All checks passed (1 script)."


def test_notebook_launch_in_a_script_is_found_and_fixed_and_the_notebook_is_not(tmp_path):
    script, nb = tmp_path / "script.py", tmp_path / "nb.py"
    script.write_text(NOTEBOOK_LAUNCH)
    nb.write_text(FORKING_NOTEBOOK)
    r = run_cli("check", "--include-scripts", ".", cwd=tmp_path)
    out = r.stdout.decode().splitlines()
    assert r.returncode == 1
    assert out[0].startswith("script.py:4:61: NBR601 `Trainer(strategy='ddp_notebook')` forks from this script's process")
    assert out[1] == "Found 1 finding in 2 files. 1 fixable with `nbrefactor fix`, 0 more with `--unsafe-fixes`."
    data = json.loads(run_cli("check", "--output-format", "json", "script.py", cwd=tmp_path).stdout)
    assert [(d["code"], d["cell"], d["location"]) for d in data] == [("NBR601", None, {"row": 4, "column": 61})]
    r = run_cli("fix", "--include-scripts", ".", cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert r.stdout.decode().splitlines() == ["script.py: fixed", "  NBR601 strategy 'ddp_notebook' -> 'ddp'", "1 change in 1 script."]
    assert script.read_text() == NOTEBOOK_LAUNCH.replace('"ddp_notebook"', '"ddp"')
    assert nb.read_text() == FORKING_NOTEBOOK  # `ddp_notebook` is right in a notebook


def test_folders_take_scripts_only_when_asked(tmp_path):
    (tmp_path / "train.py").write_text(NOTEBOOK_LAUNCH)
    (tmp_path / "nb.py").write_text(FORKING_NOTEBOOK)
    r = run_cli("check", ".", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.decode().strip() == "All checks passed (1 notebook)."
    r = run_cli("check", "--include-scripts", ".", cwd=tmp_path)
    assert r.returncode == 1 and b"train.py:4:61: NBR601" in r.stdout
    r = run_cli("check", "--pre-commit", "--include-scripts", "train.py", cwd=tmp_path)
    assert r.returncode == 1 and b"train.py:4:61: NBR601" in r.stdout
    (tmp_path / "pyproject.toml").write_text("[tool.nbrefactor]\ninclude-scripts = true\n")
    r = run_cli("check", ".", cwd=tmp_path)
    assert r.returncode == 1 and b"train.py:4:61: NBR601" in r.stdout and b"in 2 files" in r.stdout
    (tmp_path / "pyproject.toml").write_text('[tool.nbrefactor]\ninclude-scripts = "yes"\n')
    r = run_cli("check", ".", cwd=tmp_path)
    assert r.returncode == 2 and b"include-scripts must be true or false" in r.stderr


def test_download_in_every_process(tmp_path):
    (tmp_path / "train.py").write_text(
        "import lightning as L\nfrom torchvision.datasets import MNIST\n\n"
        'fabric = L.Fabric(accelerator="cuda", devices=2, strategy="ddp")\nfabric.launch()\n'
        'dataset = MNIST("data", download=True)\n'
    )
    r = run_cli("check", "train.py", cwd=tmp_path)
    out = r.stdout.decode().splitlines()
    assert r.returncode == 1
    assert out[0].startswith("train.py:6:11: NBR602 `MNIST(..., download=True)`: it runs after `fabric.launch()`, in every training process")
    assert "`prepare_data()`" in out[0] and "`fabric.barrier()`" in out[0]
    assert run_cli("fix", "train.py", cwd=tmp_path).returncode == 1  # no fix: a manual step


def test_download_in_a_launched_function_or_after_a_launch_in_main(tmp_path):
    (tmp_path / "train.py").write_text(
        "import lightning as L\nfrom torchvision.datasets import CIFAR10\n\n\n"
        "def train(fabric):\n"
        '    data = CIFAR10("data", download=True)\n'
        "    if fabric.global_rank == 0:\n"
        '        CIFAR10("data", download=True)\n\n\n'
        "def main():\n"
        '    fabric = L.Fabric(devices=2, strategy="ddp")\n'
        '    CIFAR10("data", download=True)\n'
        "    fabric.launch()\n"
        '    data = CIFAR10("data", download=True)\n\n\n'
        'if __name__ == "__main__":\n'
        '    fabric = L.Fabric(devices=2, strategy="ddp")\n'
        "    fabric.launch(train)\n"
        "    main()\n"
    )
    out = run_cli("check", "train.py", cwd=tmp_path).stdout.decode().splitlines()
    assert [line.split(" ", 2)[:2] for line in out[:-1]] == [["train.py:6:12:", "NBR602"], ["train.py:15:12:", "NBR602"]]
    assert "`train()` is launched in every training process" in out[0]
    assert "after `fabric.launch()` in `main()`" in out[1]


SPAWNING = 'import lightning as L\n\nmodel = None\ntrainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_spawn")\ntrainer.fit(model)\nprint("done")\n'


def test_spawn_without_main_guard_is_found_and_fixed(tmp_path):
    p = tmp_path / "train.py"
    p.write_text(SPAWNING)
    r = run_cli("check", "train.py", cwd=tmp_path)
    assert r.returncode == 1 and r.stdout.decode().startswith("train.py:5:1: NBR603 `trainer.fit(...)` starts processes with the spawn start method")
    diff = run_cli("fix", "--diff", "train.py", cwd=tmp_path).stdout.decode().splitlines()
    assert diff[:2] == ["--- train.py", "+++ train.py"] and '+if __name__ == "__main__":' in diff
    r = run_cli("fix", "train.py", cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert p.read_text() == SPAWNING.replace('trainer.fit(model)\nprint("done")\n', 'if __name__ == "__main__":\n    trainer.fit(model)\n    print("done")\n')
    assert run_cli("check", "train.py", cwd=tmp_path).returncode == 0


def test_spawn_without_main_guard_has_no_fix_when_a_definition_follows(tmp_path):
    text = "import torch.multiprocessing as mp\n\nmp.set_start_method(\"spawn\")\n\ndef worker(rank):\n    pass\n\nmp.spawn(worker, nprocs=2)\n"
    p = tmp_path / "train.py"
    p.write_text(text)
    r = run_cli("check", "train.py", cwd=tmp_path)
    out = r.stdout.decode().splitlines()
    assert r.returncode == 1
    assert out[0].startswith("train.py:3:1: NBR603 `mp.set_start_method(...)` sets the start method") and "a definition or an import follows" in out[0]
    assert out[1].startswith("train.py:8:1: NBR603 `mp.spawn(...)` starts processes")
    assert run_cli("fix", "train.py", cwd=tmp_path).returncode == 1
    assert p.read_text() == text


def test_a_script_that_does_not_parse_is_a_note_without_a_cell(tmp_path):
    (tmp_path / "train.py").write_text("import lightning as L\ntrainer = L.Trainer(\n")
    r = run_cli("check", "train.py", cwd=tmp_path)
    note = r.stderr.decode()
    assert note.startswith("note: train.py:") and "cell" not in note.split(":")[1]


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
