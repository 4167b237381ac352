"""`check` and `fix` never run code from the checked tree and never write outside the notebook's own
folder (issue 12, items 1 and 2).

Item 1: jupytext executes a `.jupytext.py` configuration file, and jupytext's search goes up every
folder to `/` and then to the user's configuration folders. nbrefactor parses only the data formats
itself and stops at the repository root: a `.jupytext.py` that would create a marker file, in the
notebook's folder, above the repository root, or in `$XDG_CONFIG_HOME/jupytext`, never runs; a
`jupytext.toml` above the root does not pair, one at or below the root (or `[tool.jupytext]`) does.

Item 2: pairing metadata (`jupytext.formats`) whose partner lies outside the notebook's folder
(`../pkg//`, an absolute prefix, a subfolder that is a symbolic link leading out) is refused with
one line: `fix` exits 2 and writes nothing, `check` notes it and checks the notebook alone.

Every test runs the real console entry point in a subprocess with its own configuration folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

SEED = ROOT / "golden" / "fabric_seed_data" / "input.ipynb"  # a notebook `fix` changes

# Would leave a marker file if anything executed it (the path is filled in per test).
EVIL_CONFIG = """\
import pathlib
pathlib.Path({marker!r}).write_text("executed")
c.JupytextConfiguration.formats = "ipynb,py:percent"
"""


@pytest.fixture(autouse=True)
def isolated_config_dirs(tmp_path, monkeypatch):
    """No user or system jupytext configuration of this machine takes part."""
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "no-system-config"))
    monkeypatch.delenv("JUPYTEXT_CEILING_DIRECTORIES", raising=False)
    return home / ".config"


def repository(at: Path) -> Path:
    """A folder that is a repository root (it holds `.git`)."""
    (at / ".git").mkdir(parents=True)
    return at


def notebook(folder: Path, formats: str | None = None, *, newer: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nb = folder / "nb.ipynb"
    data = json.loads(SEED.read_text())
    if formats is not None:
        data["metadata"]["jupytext"] = {"formats": formats}
    nb.write_text(json.dumps(data, indent=1) + "\n")
    if newer:  # the .ipynb is the newer side: a pair is written from it, every partner rewritten
        t = time.time() + 5
        os.utime(nb, (t, t))
    return nb


def percent_text(nb: Path, target: Path) -> Path:
    """`target`: the notebook as a py:percent text file, written by jupytext itself."""
    target.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        [sys.executable, "-m", "jupytext", "--to", "py:percent", "-o", str(target), str(nb)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    t = time.time() - 60  # older than the .ipynb
    os.utime(target, (t, t))
    return target


def lines(r, prefix: str) -> list[str]:
    return [line for line in (r.stdout + r.stderr).decode().splitlines() if line.startswith(prefix)]


def out(r) -> str:
    return (r.stdout + r.stderr).decode()


# --- item 1: no configuration code runs -------------------------------------------------------


@pytest.mark.parametrize("where", ["notebook folder", "above the repository root", "user config folder"])
def test_a_jupytext_py_config_is_never_executed(tmp_path, isolated_config_dirs, where):
    marker = tmp_path / "EXECUTED"
    repo = repository(tmp_path / "outer" / "repo")
    nb = notebook(repo / "notebooks")
    text_nb = percent_text(nb, repo / "notebooks" / "text_nb.py")  # a text notebook reads its config too
    folder = {
        "notebook folder": repo / "notebooks",
        "above the repository root": tmp_path / "outer",
        "user config folder": isolated_config_dirs / "jupytext",
    }[where]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".jupytext.py").write_text(EVIL_CONFIG.format(marker=str(marker)))

    for command in (["check", "nb.ipynb", "text_nb.py"], ["fix", "nb.ipynb", "text_nb.py"]):
        r = run_cli(*command, cwd=nb.parent)
        assert r.returncode in (0, 1), out(r)
        assert not marker.exists(), f"`nbrefactor {command[0]}` executed {folder / '.jupytext.py'}"
    assert "EXECUTED" not in text_nb.read_text()


# --- item 1: the configuration search stops at the repository root ------------------------------


def test_a_jupytext_toml_above_the_repository_root_is_not_read(tmp_path):
    (tmp_path / "outer").mkdir()
    (tmp_path / "outer" / "jupytext.toml").write_text('formats = "ipynb,py:percent"\n')
    repo = repository(tmp_path / "outer" / "repo")
    nb = notebook(repo / "notebooks")
    py = percent_text(nb, nb.with_suffix(".py"))
    before = py.read_bytes()

    r = run_cli("fix", "nb.ipynb", cwd=nb.parent)
    assert r.returncode in (0, 1), out(r)
    assert "its jupytext pair" not in out(r)
    assert py.read_bytes() == before  # not paired: the .py is not touched
    assert nb.read_bytes() != SEED.read_bytes()  # the notebook itself was fixed


@pytest.mark.parametrize("where", ["jupytext.toml at the root", "jupytext.toml below the root", "[tool.jupytext] in the root's pyproject.toml"])
def test_a_jupytext_config_at_or_below_the_repository_root_pairs(tmp_path, where):
    repo = tmp_path / "outer" / "repo"
    repo.mkdir(parents=True)
    if where.startswith("[tool.jupytext]"):
        (repo / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.jupytext]\nformats = "ipynb,py:percent"\n')
    else:
        repository(repo)
        folder = repo if "at the root" in where else repo / "notebooks"
        folder.mkdir(exist_ok=True)
        (folder / "jupytext.toml").write_text('formats = "ipynb,py:percent"\n')
    nb = notebook(repo / "notebooks" / "deeper")
    py = percent_text(nb, nb.with_suffix(".py"))
    before = py.read_bytes()

    r = run_cli("fix", "nb.ipynb", cwd=nb.parent)
    assert r.returncode in (0, 1), out(r)
    assert "(and nb.py, its jupytext pair)" in out(r)
    assert py.read_bytes() != before  # paired: the text side was written too


# --- item 2: partners outside the notebook's folder ---------------------------------------------


def _module(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("def real_module():\n    return 42\n")
    t = time.time() - 60
    os.utime(path, (t, t))
    return path.read_bytes()


@pytest.mark.parametrize("cwd", ["repository root", "notebook folder"])
def test_a_dotdot_partner_is_refused_and_left_byte_identical(tmp_path, cwd):
    repo = repository(tmp_path / "repo")
    module = repo / "pkg" / "nb.py"
    original = _module(module)
    nb = notebook(repo / "sub", "ipynb,../pkg//py:percent")
    nb_before = nb.read_bytes()
    run_in, named, shown = {
        "repository root": (repo, "sub/nb.ipynb", "pkg/nb.py"),
        "notebook folder": (nb.parent, "nb.ipynb", "../pkg/nb.py"),
    }[cwd]

    r = run_cli("fix", named, cwd=run_in)
    assert r.returncode == 2, out(r)
    assert lines(r, "error:") == [f"error: {named}: jupytext pair {shown} is outside the notebook's folder; nothing written"]
    assert module.read_bytes() == original
    assert nb.read_bytes() == nb_before  # nothing written at all

    r = run_cli("check", named, cwd=run_in)
    assert lines(r, "note:") == [f"note: {named}: jupytext pair {shown} is outside the notebook's folder; checked alone"]
    assert r.returncode == 1 and f"{named}:cell" in r.stdout.decode(), out(r)  # still checked, by itself
    assert module.read_bytes() == original


def test_an_absolute_prefix_partner_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    module = outside / "nb.py"
    original = _module(module)
    repo = repository(tmp_path / "repo")
    nb = notebook(repo / "sub", f"ipynb,{outside.as_posix()}//py:percent")
    nb_before = nb.read_bytes()

    for named, run_in in (("nb.ipynb", nb.parent), ("sub/nb.ipynb", repo), (str(nb), tmp_path)):
        r = run_cli("fix", named, cwd=run_in)
        assert r.returncode == 2, out(r)
        assert lines(r, "error:") == [
            f"error: {named}: jupytext pair {module.as_posix()} is outside the notebook's folder (an absolute prefix); nothing written"
        ]
        assert module.read_bytes() == original and nb.read_bytes() == nb_before


def test_a_symlinked_subfolder_leading_out_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    module = outside / "nb.py"
    original = _module(module)
    repo = repository(tmp_path / "repo")
    nb = notebook(repo / "sub", "ipynb,py//py:percent")
    (nb.parent / "py").symlink_to(outside, target_is_directory=True)
    nb_before = nb.read_bytes()

    r = run_cli("fix", "nb.ipynb", cwd=nb.parent)
    assert r.returncode == 2, out(r)
    assert lines(r, "error:") == [
        f"error: nb.ipynb: jupytext pair py/nb.py is outside the notebook's folder (it leads to {os.path.realpath(module)}); nothing written"
    ]
    assert module.read_bytes() == original and nb.read_bytes() == nb_before


def test_a_subfolder_partner_inside_the_tree_still_pairs(tmp_path):
    """`py//` (and a prefix root from a configuration file) stay paired: `--sync` compatibility."""
    repo = repository(tmp_path / "repo")
    nb = notebook(repo / "sub", "ipynb,py//py:percent")
    py = percent_text(nb, nb.parent / "py" / "nb.py")
    before = py.read_bytes()
    r = run_cli("fix", "nb.ipynb", cwd=nb.parent)
    assert r.returncode in (0, 1), out(r)
    assert "(and py/nb.py, its jupytext pair)" in out(r)
    assert py.read_bytes() != before

    (repo / "jupytext.toml").write_text('formats = "notebooks///ipynb,scripts///py:percent"\n')
    nb2 = notebook(repo / "notebooks" / "a")
    py2 = percent_text(nb2, repo / "scripts" / "a" / "nb.py")
    before2 = py2.read_bytes()
    r = run_cli("fix", "notebooks/a/nb.ipynb", cwd=repo)
    assert r.returncode in (0, 1), out(r)
    assert "(and scripts/a/nb.py, its jupytext pair)" in out(r)
    assert py2.read_bytes() != before2
