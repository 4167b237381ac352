"""Which files a command works on: named files as given, folders searched for notebooks.

In a folder every `.ipynb` is a notebook; a `.py` or `.md` counts only when it is a jupytext
notebook (a jupytext header or `# %%` cell markers), so a package's modules are not linted, unless
scripts are asked for (`--include-scripts`). A plain script named on the command line is always
checked, as a script: the whole file is one cell (`read_script`), and the rules for scripts apply.
Hidden folders, `.ipynb_checkpoints`, virtual environments and `node_modules` are skipped, and so
is anything in a folder that is not a regular file (a FIFO, a device, a link to one): it is never
opened. Named on the command line, such a file is an error.
The sides of a jupytext pair (`nb.ipynb` and `nb.py`) are one notebook: listed once, by its
`.ipynb` when that is among the files found or named.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path

from nbrefactor.errors import NotebookError
from nbrefactor.notebook.model import Cell, Notebook, is_regular_file

_SKIP_DIRS = {".ipynb_checkpoints", "node_modules", "__pycache__", "site-packages", "venv", ".venv", "build", "dist"}
# A jupytext header, or cell markers: percent (`# %%`, `#%%`) or light (`# +`).
_JUPYTEXT_PY = re.compile(r"^(# ---\n#\s+jupyter:|#\s?%%|#\s+jupyter:|# \+\s*$)", re.MULTILINE)
SCRIPT_MESSAGE = "a Python script, not a notebook (no jupytext header or cell markers): `nbrefactor check` and `fix` take scripts, `run` runs notebooks"
_JUPYTEXT_MD = re.compile(r"^---\n(?:.*\n)*?jupyter:", re.MULTILINE)


def _looks_like_text_notebook(path: Path) -> bool:
    from nbrefactor.notebook.model import read_head

    data = read_head(path, 20000)  # None for a FIFO, a device, a folder: never read
    if data is None:
        return False
    head = data.decode("utf-8", errors="replace")
    if path.suffix == ".py":
        return _JUPYTEXT_PY.search(head) is not None
    return _JUPYTEXT_MD.search(head) is not None


def is_plain_script(path: Path) -> bool:
    """A `.py` file that is not a jupytext notebook: no header, no cell markers, and no `.ipynb`
    beside it that it could be the text side of."""
    return (
        path.suffix == ".py"
        and path.is_file()
        and not _looks_like_text_notebook(path)
        and not path.with_suffix(".ipynb").exists()
    )


class ScriptNotebook(Notebook):
    """A plain Python script as one code cell: rows are the file's lines, and writing it back
    is writing that cell."""

    context = "script"
    ending = ""  # the newlines the file ends with: a cell's source has none at its end

    def render(self, new_sources: dict[int, str], deleted: set[int] = frozenset()) -> str:
        if 0 in deleted:
            return ""
        source = new_sources.get(0, self.cells[0].source)
        return self.raw if source == self.cells[0].source else source.rstrip("\r\n") + self.ending


def read_script(path: str | os.PathLike, data: bytes | None = None) -> ScriptNotebook:
    """A plain `.py` script (or the given bytes, named `path`) as a one-cell notebook."""
    from nbrefactor import limits
    from nbrefactor.notebook.model import _decode, read_file

    path = str(path)
    if data is None:
        data = read_file(path)
    limits.check_file_size(path, len(data))
    text = _decode(path, data)
    source = text.rstrip("\r\n")
    cells = [Cell(0, "code", source)]
    limits.check_cells(path, cells)
    script = ScriptNotebook(path, "script", cells, "python", text)
    script.ending = text[len(source):]
    return script


def _wanted(f: Path, include_scripts: bool) -> bool:
    if f.suffix == ".ipynb":
        return True
    if f.suffix in (".py", ".md") and _looks_like_text_notebook(f):
        return True
    return include_scripts and is_plain_script(f)


def _excluded(path: Path, patterns: tuple[str, ...]) -> bool:
    text = path.as_posix()
    return any(fnmatch.fnmatch(text, p) or fnmatch.fnmatch(path.name, p) for p in patterns)


def notebook_paths(paths: list[str], exclude: tuple[str, ...] = (), include_scripts: bool = False) -> tuple[list[Path], list[NotebookError]]:
    """The notebooks (and, with `include_scripts`, the plain scripts) under `paths`, and one error
    per path that does not exist. A file named is taken as it is, a plain script included."""
    found: list[Path] = []
    errors: list[NotebookError] = []
    for raw in paths:
        p = Path(raw)
        if raw == "-":
            found.append(p)
        elif p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS and not _excluded(Path(root, d), exclude))
                for name in sorted(files):
                    f = Path(root, name)
                    if _excluded(f, exclude) or not is_regular_file(f):  # FIFOs, devices, links to them
                        continue
                    if _wanted(f, include_scripts):
                        found.append(f)
        elif p.exists() or p.is_symlink():
            found.append(p)
        else:
            errors.append(NotebookError(raw, "no such file or folder"))
    return _one_per_pair(found), errors


def _one_per_pair(paths: list[Path]) -> list[Path]:
    """`paths` with every jupytext pair kept once (at its first place, named by its .ipynb when
    that is listed)."""
    from nbrefactor.notebook.pairs import may_be_paired, pair_key

    keys: list[object] = []
    for p in paths:
        if str(p) == "-":
            keys.append(None)
            continue
        key = None
        if p.is_file() and may_be_paired(p):
            key = pair_key(p)
        keys.append(key)
    chosen: dict[object, Path] = {}
    order: list[object] = []
    for p, key in zip(paths, keys):
        if key is None:
            order.append(object())
            chosen[order[-1]] = p
        elif key not in chosen:
            order.append(key)
            chosen[key] = p
        elif p.suffix == ".ipynb" and chosen[key].suffix != ".ipynb":
            chosen[key] = p
    return [chosen[k] for k in order]


def named_notebooks(paths: list[str], exclude: tuple[str, ...] = (), include_scripts: bool = False) -> tuple[list[Path], list[NotebookError]]:
    """The notebooks among files named one by one, as a pre-commit hook gets them: a `.py` or
    `.md` file only when it is a jupytext notebook (or, with `include_scripts`, a plain script),
    `exclude` applied, folders searched, the sides of a pair once. No paths: nothing."""
    found: list[Path] = []
    errors: list[NotebookError] = []
    folders: list[str] = []
    for raw in paths:
        p = Path(raw)
        if raw == "-":
            found.append(p)
        elif p.is_dir():
            folders.append(raw)
        elif not (p.exists() or p.is_symlink()):
            errors.append(NotebookError(raw, "no such file or folder"))
        elif _excluded(p, exclude):
            continue
        elif _wanted(p, include_scripts):
            found.append(p)
    if folders:
        more, more_errors = notebook_paths(folders, exclude, include_scripts)
        found += more
        errors += more_errors
    return _one_per_pair(found), errors
