"""Every bad input gets one line naming the file, exit 2 (or a note and a skip), and no traceback."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.conftest import CORPUS, run_cli

GOOD = {
    "cells": [{"cell_type": "code", "execution_count": None, "id": "a", "metadata": {}, "outputs": [], "source": ["x = 1"]}],
    "metadata": {"kernelspec": {"language": "python", "name": "python3", "display_name": "P"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def _one_line_error(result, name):
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and name in lines[0], err
    return lines[0]


def test_invalid_json(tmp_path):
    p = tmp_path / "broken.ipynb"
    p.write_text('{"cells": [')
    line = _one_line_error(run_cli("check", str(p)), "broken.ipynb")
    assert "not valid JSON" in line and "line 1" in line


def test_json_that_is_not_a_notebook(tmp_path):
    p = tmp_path / "list.ipynb"
    p.write_text("[1, 2]")
    assert "not an object" in _one_line_error(run_cli("check", str(p)), "list.ipynb")
    p2 = tmp_path / "nokeys.ipynb"
    p2.write_text('{"a": 1}')
    assert "nbformat" in _one_line_error(run_cli("check", str(p2)), "nokeys.ipynb")


def test_nbformat3_is_checked_after_upgrade_in_memory(tmp_path):
    v3 = {"metadata": {}, "nbformat": 3, "nbformat_minor": 0, "worksheets": [{"cells": [
        {"cell_type": "code", "input": "import lightning as L\ntrainer = L.Trainer(max_epochs=1)", "language": "python", "metadata": {}, "outputs": []}]}]}
    p = tmp_path / "v3.ipynb"
    p.write_text(json.dumps(v3))
    r = run_cli("check", str(p))
    assert r.returncode == 1 and b"v3.ipynb:cell 1:2:11: NBR402" in r.stdout


@pytest.mark.parametrize("language", ["R", "julia"])
def test_other_kernel_languages_are_skipped_with_a_note(tmp_path, language):
    nb = dict(GOOD, metadata={"kernelspec": {"language": language, "name": language.lower(), "display_name": language}})
    p = tmp_path / f"{language}.ipynb"
    p.write_text(json.dumps(nb))
    r = run_cli("check", str(p))
    assert r.returncode == 0
    assert f"skipped, the kernel language is {language.lower()}" in r.stderr.decode()


def test_cell_with_a_syntax_error_is_a_note_not_a_crash(tmp_path):
    nb = json.loads(json.dumps(GOOD))
    nb["cells"][0]["source"] = ["import lightning as L\n", "class_dict = {???}"]
    p = tmp_path / "syntax.ipynb"
    p.write_text(json.dumps(nb))
    r = run_cli("check", str(p))
    assert r.returncode == 0
    assert "syntax.ipynb:cell 1:2: cell skipped, not Python" in r.stderr.decode()


def test_cell_magic_bash_is_skipped_silently(tmp_path):
    nb = json.loads(json.dumps(GOOD))
    nb["cells"][0]["source"] = ["%%bash\n", "echo lightning Trainer"]
    p = tmp_path / "bash.ipynb"
    p.write_text(json.dumps(nb))
    r = run_cli("check", str(p))
    assert r.returncode == 0 and b"not Python" not in r.stderr


def test_empty_notebook_and_empty_file(tmp_path):
    p = tmp_path / "empty.ipynb"
    p.write_text(json.dumps(dict(GOOD, cells=[])))
    assert run_cli("check", str(p)).returncode == 0
    z = tmp_path / "zero.ipynb"
    z.write_text("")
    assert "empty file" in _one_line_error(run_cli("check", str(z)), "zero.ipynb")


def test_missing_file(tmp_path):
    assert "no such file" in _one_line_error(run_cli("check", str(tmp_path / "nope.ipynb")), "nope.ipynb")


def test_folder_is_searched_and_a_folder_named_like_a_notebook_is_not_a_crash(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.ipynb").write_text(json.dumps(GOOD))
    (tmp_path / "module.py").write_text("import torch\n")  # not a jupytext notebook: not picked up
    r = run_cli("check", str(tmp_path))
    assert r.returncode == 0 and b"All checks passed (1 notebook)" in r.stdout
    empty = tmp_path / "nothing"
    empty.mkdir()
    r = run_cli("check", str(empty))
    assert r.returncode == 0 and b"no notebooks found" in r.stderr


def test_read_only_file_is_checked(tmp_path):
    p = tmp_path / "ro.ipynb"
    p.write_text(json.dumps(GOOD))
    p.chmod(0o444)
    assert run_cli("check", str(p)).returncode == 0


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    p = tmp_path / "secret.ipynb"
    p.write_text(json.dumps(GOOD))
    p.chmod(0)
    assert "permission denied" in _one_line_error(run_cli("check", str(p)), "secret.ipynb")


def test_path_with_spaces(tmp_path):
    d = tmp_path / "my notebooks"
    d.mkdir()
    nb = json.loads(json.dumps(GOOD))
    nb["cells"][0]["source"] = ["import lightning as L\n", "trainer = L.Trainer()"]
    p = d / "a b.ipynb"
    p.write_text(json.dumps(nb))
    r = run_cli("check", str(p))
    assert r.returncode == 1 and "my notebooks/a b.ipynb:cell 1:2:11: NBR402" in r.stdout.decode()


def test_non_utf8_bytes(tmp_path):
    p = tmp_path / "latin1.ipynb"
    p.write_bytes(json.dumps(GOOD).replace("x = 1", "x = 'caf\\u00e9'").encode().replace(b"\\u00e9", b"\xe9"))
    assert "not UTF-8" in _one_line_error(run_cli("check", str(p)), "latin1.ipynb")


@pytest.mark.skipif(not (CORPUS / "rasbt__pattern_classification").is_dir(), reason="../shared/corpus is absent")
def test_png_saved_as_ipynb(tmp_path):
    src = CORPUS / "rasbt__pattern_classification" / "Images__ml3_3d_lot.ipynb"
    p = tmp_path / "image.ipynb"
    shutil.copy(src, p)
    assert "not UTF-8" in _one_line_error(run_cli("check", str(p)), "image.ipynb")


def test_errors_do_not_stop_other_files(tmp_path):
    good = tmp_path / "good.ipynb"
    nb = json.loads(json.dumps(GOOD))
    nb["cells"][0]["source"] = ["import lightning as L\n", "trainer = L.Trainer()"]
    good.write_text(json.dumps(nb))
    r = run_cli("check", str(tmp_path / "missing.ipynb"), str(good))
    assert r.returncode == 2 and b"NBR402" in r.stdout


# --- limits (nbrefactor/limits.py): configurable, and a skipped file is an error, never "clean" ---


def _notebook_with(*sources: str) -> str:
    nb = json.loads(json.dumps(GOOD))
    nb["cells"] = [dict(GOOD["cells"][0], id=f"c{i}", source=s) for i, s in enumerate(sources)]
    return json.dumps(nb)


FINDING = "import lightning as L\ntrainer = L.Trainer()\n"


def test_the_time_budget_skips_one_notebook_and_the_others_are_still_checked(tmp_path):
    # 3 s: ten times what the quick notebook takes, so a loaded CI machine does not skip it too;
    # the slow one takes 11 s on a quiet machine (one such line took 8 s, until `fix` got faster
    # and it took 2.6 s: the work must stay well above the budget as nbrefactor gets faster).
    (tmp_path / "pyproject.toml").write_text("[tool.nbrefactor]\ntime-budget = 3\n")
    slow = "".join(f"x{i} = " + " < ".join(["a"] * 20000) + "\n" for i in range(5))  # linear, but seconds of work
    (tmp_path / "slow.ipynb").write_text(_notebook_with(FINDING, slow))
    (tmp_path / "quick.ipynb").write_text(_notebook_with(FINDING))
    r = run_cli("check", "slow.ipynb", "quick.ipynb", cwd=tmp_path)
    line = _one_line_error(r, "slow.ipynb")
    assert "time budget of 3 s" in line and "time-budget" in line
    assert b"quick.ipynb:cell 1:2:" in r.stdout and b"slow.ipynb:cell" not in r.stdout


def test_limits_come_from_pyproject_and_name_the_key_to_raise(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.nbrefactor]\nmax-cells = 2\nmax-cell-lines = 3\n")
    (tmp_path / "many.ipynb").write_text(_notebook_with(FINDING, "x = 1\n", "y = 2\n"))
    line = _one_line_error(run_cli("check", "many.ipynb", cwd=tmp_path), "many.ipynb")
    assert "3 cells (at most 2; raise max-cells in [tool.nbrefactor])" in line
    (tmp_path / "long.ipynb").write_text(_notebook_with(FINDING + "a = 1\nb = 2\n"))
    line = _one_line_error(run_cli("fix", "long.ipynb", cwd=tmp_path), "long.ipynb:cell 1")
    assert "4 lines (at most 3; raise max-cell-lines" in line
    (tmp_path / "pyproject.toml").write_text("[tool.nbrefactor]\nmax-cells = 0\nmax-cell-lines = 0\n")  # 0: no limit
    assert run_cli("check", "many.ipynb", "long.ipynb", cwd=tmp_path).returncode == 1


@pytest.mark.parametrize("value", ['"many"', "-1", "true", "2.5"])
def test_a_bad_limit_value_is_one_error_line(tmp_path, value):
    (tmp_path / "pyproject.toml").write_text(f"[tool.nbrefactor]\nmax-cells = {value}\n")
    (tmp_path / "nb.ipynb").write_text(_notebook_with(FINDING))
    line = _one_line_error(run_cli("check", "nb.ipynb", cwd=tmp_path), "pyproject.toml")
    assert "max-cells must be a non-negative whole number" in line


def test_a_bug_is_an_error_for_that_file_not_a_traceback_or_findings(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import nbrefactor.checker
    from nbrefactor.cli import main

    (tmp_path / "a.ipynb").write_text(_notebook_with(FINDING))
    (tmp_path / "b.ipynb").write_text(_notebook_with(FINDING))
    real = nbrefactor.checker.check_notebook

    def broken(notebook, selection, **kwargs):
        if notebook.path.endswith("a.ipynb"):
            raise KeyError("boom")
        return real(notebook, selection, **kwargs)

    monkeypatch.setattr(nbrefactor.checker, "check_notebook", broken)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["check", "--isolated", "a.ipynb", "b.ipynb"])
    assert r.exit_code == 2, r.output
    assert "error: a.ipynb: internal error, please report it: KeyError: 'boom'" in r.stderr
    assert "b.ipynb:cell 1:2:" in r.stdout and "Traceback" not in r.output


def test_fix_writes_nothing_for_a_file_that_errors_and_fixes_the_others(tmp_path):
    deep = FINDING + "x = a" + ".b" * 5000 + "\n"
    (tmp_path / "deep.ipynb").write_text(_notebook_with(deep))
    fabric = "import lightning as L\nfabric = L.Fabric(devices=2, strategy='ddp')\n"
    (tmp_path / "ok.ipynb").write_text(_notebook_with(fabric))
    before = (tmp_path / "deep.ipynb").read_bytes()
    r = run_cli("fix", "deep.ipynb", "ok.ipynb", cwd=tmp_path)
    assert "nested too deeply" in _one_line_error(r, "deep.ipynb:cell 1:3")
    assert (tmp_path / "deep.ipynb").read_bytes() == before
    assert "ddp_notebook" in (tmp_path / "ok.ipynb").read_text()
