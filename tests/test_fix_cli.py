"""`nbrefactor fix` as a user runs it: diff, check, output, unsafe fixes, atomic and refused writes,
and the libcst codemod CLI on jupytext py:percent notebooks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli

SEED = ROOT / "golden" / "fabric_seed_data" / "input.ipynb"
EXPLORE = ROOT / "golden" / "fabric_exploration" / "input.ipynb"


@pytest.fixture
def nb(tmp_path):
    p = tmp_path / "nb.ipynb"
    shutil.copy(SEED, p)
    return p


def test_fix_writes_and_summarises_with_rule_codes(nb):
    r = run_cli("fix", str(nb))
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "nb.ipynb: fixed" in out and "cell 2: NBR201 built the data of cell 2 inside train(fabric)" in out
    assert nb.read_text() == (ROOT / "golden" / "fabric_seed_data" / "expected.ipynb").read_text()
    again = run_cli("fix", str(nb))
    assert again.returncode == 0 and b"Nothing to fix." in again.stdout


def test_diff_shows_cells_and_writes_nothing(nb):
    before = nb.read_bytes()
    r = run_cli("fix", "--diff", str(nb))
    out = r.stdout.decode()
    assert r.returncode == 1
    assert f"--- {nb}:cell 2" in out and "+    dataset = MyDataset(\"data/\")" in out
    assert nb.read_bytes() == before


def test_check_mode_exits_1_and_writes_nothing(nb):
    before = nb.read_bytes()
    assert run_cli("fix", "--check", str(nb)).returncode == 1
    assert nb.read_bytes() == before
    clean = nb.parent / "clean.ipynb"
    shutil.copy(ROOT / "golden" / "fabric_already_safe" / "input.ipynb", clean)
    assert run_cli("fix", "--check", str(clean)).returncode == 0


def test_output_file_leaves_the_input_alone(nb, tmp_path):
    before = nb.read_bytes()
    out = tmp_path / "fixed.ipynb"
    r = run_cli("fix", str(nb), "-o", str(out))
    assert r.returncode == 0 and nb.read_bytes() == before
    assert json.loads(out.read_text())["cells"]
    assert run_cli("fix", str(nb), str(nb), "-o", str(out)).returncode == 2


def test_unsafe_fixes_are_opt_in(tmp_path):
    p = tmp_path / "explore.ipynb"
    shutil.copy(EXPLORE, p)
    r = run_cli("fix", str(p))
    assert r.returncode == 1 and b"NBR201" in r.stdout and b"--unsafe-fixes" in r.stdout
    assert p.read_bytes() == EXPLORE.read_bytes()
    assert run_cli("fix", "--unsafe-fixes", str(p)).returncode == 0
    assert "make_dataset" in p.read_text()


def test_unsafe_fixes_from_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.nbrefactor]\nunsafe-fixes = true\n")
    shutil.copy(EXPLORE, tmp_path / "explore.ipynb")
    assert run_cli("fix", "explore.ipynb", cwd=tmp_path).returncode == 0
    assert "make_dataset" in (tmp_path / "explore.ipynb").read_text()


def test_devices_makes_nbr402_explicit(tmp_path):
    p = tmp_path / "t.ipynb"
    nb = json.loads(SEED.read_text())
    nb["cells"] = [nb["cells"][0] | {"source": ["import lightning as L\n", "trainer = L.Trainer(max_epochs=1)"]}]
    p.write_text(json.dumps(nb, indent=1))
    assert run_cli("fix", str(p)).returncode == 1  # NBR402 remains without --devices
    assert run_cli("fix", "--devices", "4", str(p)).returncode == 0
    assert "L.Trainer(max_epochs=1, devices=4)" in "".join(json.loads(p.read_text())["cells"][0]["source"])


def test_read_only_and_v3_notebooks_are_refused_with_nothing_written(nb, tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pass  # root may write read-only files; the writer checks the mode itself
    nb.chmod(0o444)
    before = nb.read_bytes()
    r = run_cli("fix", str(nb))
    assert r.returncode == 2 and b"read-only" in r.stderr and b"Traceback" not in r.stderr
    assert nb.read_bytes() == before
    assert b"fixed" not in r.stdout and b"change" not in r.stdout  # nothing claims a change it did not make
    v3 = tmp_path / "v3.ipynb"
    v3.write_text(json.dumps({"metadata": {}, "nbformat": 3, "nbformat_minor": 0, "worksheets": [{"cells": [
        {"cell_type": "code", "input": "import lightning as L\nt = L.Trainer(strategy='ddp')", "language": "python", "metadata": {}, "outputs": []}]}]}))
    before = v3.read_bytes()
    r = run_cli("fix", str(v3))
    assert r.returncode == 2 and b"nbformat 3" in r.stderr and v3.read_bytes() == before


def test_file_changed_on_disk_is_not_clobbered(nb):
    from nbrefactor.errors import NotebookError
    from nbrefactor.writer import fingerprint, write_atomically

    read = nb.read_bytes()
    nb.write_text(nb.read_text() + " ")  # an editor saved meanwhile
    with pytest.raises(NotebookError, match="changed on disk"):
        write_atomically(nb, "{}", fingerprint(read))
    assert nb.read_text().endswith(" ")
    assert not [p for p in nb.parent.iterdir() if p.name.endswith(".nbrefactor")]


def test_refusal_is_reported(tmp_path):
    p = tmp_path / "two.ipynb"
    shutil.copy(ROOT / "golden" / "fabric_two_launches" / "input.ipynb", p)
    r = run_cli("fix", str(p))
    assert r.returncode == 1 and b"several launches" in r.stderr


def test_libcst_codemod_cli_on_a_percent_notebook(tmp_path):
    import jupytext

    nb = jupytext.read(ROOT / "golden" / "fabric_script_style" / "input.ipynb")
    target = tmp_path / "nb.py"
    jupytext.write(nb, target, fmt="py:percent")
    r = subprocess.run(
        [sys.executable, "-m", "libcst.tool", "codemod", "commands.FixNotebookCommand", str(target)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    text = target.read_text()
    assert "def train(fabric):" in text and "fabric.launch(train)" in text
    fixed = jupytext.read(target)
    expected = jupytext.read(ROOT / "golden" / "fabric_script_style" / "expected.ipynb")
    code = lambda n: [c.source for c in n.cells if c.cell_type == "code" and c.source.strip()]  # noqa: E731
    assert code(fixed) == code(expected)  # the same cells as the .ipynb path, magics included
