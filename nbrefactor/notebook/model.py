"""The notebook as nbrefactor sees it: an ordered list of cells, and a way back to the file's bytes.

`read_notebook` accepts `.ipynb` (nbformat 4; nbformat 3 is upgraded in memory and read-only) and
jupytext text notebooks (`.py` percent or light, `.md`, and the other jupytext script formats).
`Notebook.render` produces the new file content from new cell sources; a notebook whose sources did
not change renders to its original bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from nbrefactor.errors import NotANotebook, NotebookError
from nbrefactor.notebook import ipynb

TEXT_NOTEBOOK_EXTENSIONS = (".py", ".md", ".markdown", ".Rmd", ".qmd", ".myst", ".mystnb", ".mnb")


@dataclass
class Cell:
    """One cell; `index` is its 0-based position among all cells (markdown and raw included)."""

    index: int
    cell_type: str
    source: str
    id: str | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def number(self) -> int:
        """The 1-based cell number users see in messages (`cell 3`), counted over all cells."""
        return self.index + 1


@dataclass
class Notebook:
    path: str
    format: str  # "ipynb", or a jupytext format such as "py:percent"
    cells: list[Cell]
    language: str | None  # kernel language as the notebook declares it, lower-case
    raw: str  # the file's text as read
    read_only_reason: str | None = None
    _ipynb: ipynb.IpynbFile | None = None
    _jupytext_node: object | None = None  # the jupytext NotebookNode, for text formats (see `_jupytext_nb`)
    _jupytext_config: object | None = None  # the jupytext configuration it was read with (jupytext.toml)

    @property
    def _jupytext_nb(self):
        """The jupytext NotebookNode of a text notebook, needed only to write it back: a notebook
        read by the fast reader (`fast_text`) gets it from jupytext on first use, so that `check`
        never imports jupytext."""
        if self._jupytext_node is None and self.format not in ("ipynb", "script") and self._ipynb is None:
            self._jupytext_node = _jupytext_reads(self.path, self.raw, Path(self.path).suffix, self._jupytext_config)
        return self._jupytext_node

    @_jupytext_nb.setter
    def _jupytext_nb(self, node) -> None:
        self._jupytext_node = node

    @property
    def is_python(self) -> bool:
        return self.language in (None, "python", "python3", "ipython", "python2")

    @property
    def code_cells(self) -> list[Cell]:
        return [c for c in self.cells if c.cell_type == "code"]

    def render(self, new_sources: dict[int, str], deleted: set[int] = frozenset()) -> str:
        """The file content with the given cells' sources replaced (outputs of those cells cleared)
        and the `deleted` cells (indices) removed.

        Cells not named keep their bytes. With no real change the original text comes back.
        """
        changed = {i: s for i, s in new_sources.items() if s != self.cells[i].source and i not in deleted}
        if not changed and not deleted:
            return self.raw
        if self.read_only_reason:
            raise NotebookError(self.path, f"cannot write this notebook: {self.read_only_reason}")
        if self._ipynb is not None:
            return ipynb.render(
                self._ipynb, [(c.index, changed.get(c.index, c.source)) for c in self.cells if c.index not in deleted]
            )
        return _render_text(self, changed, deleted)


def _render_text(nb: Notebook, changed: dict[int, str], deleted: set[int] = frozenset()) -> str:
    """The text notebook with only the changed cells' text replaced and the deleted cells' text
    removed (see `nbrefactor.notebook.text`); header, markers and other cells stay byte for byte."""
    from nbrefactor.notebook.text import TextLayoutError, splice

    try:
        return splice(lambda: nb._jupytext_nb, nb.raw, nb.format, changed, set(deleted), nb._jupytext_config)
    except TextLayoutError as err:
        raise NotebookError(nb.path, f"cannot rewrite this {nb.format} notebook cell by cell: {err}; nothing written") from None


def _decode(path: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise NotebookError(path, f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}): not a notebook") from None
    return text


def read_file(path: str | os.PathLike, limit: int | None = None, head: int | None = None) -> bytes:
    """The bytes of a regular file (a link to one included), at most `limit` bytes (default: the
    max-file-size limit). A FIFO, a device or a socket is refused before anything is read, so
    `x.ipynb -> /dev/zero` or a FIFO named like a notebook cannot hang or exhaust nbrefactor."""
    import stat

    from nbrefactor import limits

    if limit is None:
        limit = limits.active().file_bytes
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise NotebookError(path, "no such file") from None
    except IsADirectoryError:
        raise NotebookError(path, "is a folder, not a notebook") from None
    except PermissionError:
        raise NotebookError(path, "permission denied") from None
    except OSError as err:
        raise NotebookError(path, err.strerror or str(err)) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise NotebookError(path, "is a folder, not a notebook")
        if not stat.S_ISREG(st.st_mode):
            raise NotebookError(path, f"not a regular file ({_file_kind(st.st_mode)}): not a notebook")
        if limit:
            limits.check_file_size(str(path), st.st_size)
        if head is not None:
            return os.read(fd, head)
        chunks = []
        size = 0
        while True:  # the file may grow while it is read: never past the limit
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if limit:
                limits.check_file_size(str(path), size)
            chunks.append(chunk)
        return b"".join(chunks)
    except IsADirectoryError:
        raise NotebookError(path, "is a folder, not a notebook") from None
    except OSError as err:
        raise NotebookError(path, err.strerror or str(err)) from None
    finally:
        os.close(fd)


def is_regular_file(path: str | os.PathLike) -> bool:
    """A regular file, or a link to one (not a FIFO, a device, a socket or a folder)."""
    import stat

    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def read_head(path: str | os.PathLike, size: int) -> bytes | None:
    """The first `size` bytes of a regular file; None for anything else or an unreadable file."""
    try:
        return read_file(path, limit=0, head=size)
    except NotebookError:
        return None


def _file_kind(mode: int) -> str:
    import stat

    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def read_notebook(path: str | os.PathLike, data: bytes | None = None) -> Notebook:
    """Read a notebook file (or the given bytes, named `path`) into a `Notebook`."""
    from nbrefactor import limits

    path = str(path)
    if data is None:
        data = read_file(path)
    limits.check_file_size(path, len(data))
    text = _decode(path, data)
    suffix = Path(path).suffix
    if suffix == ".ipynb" or (suffix not in TEXT_NOTEBOOK_EXTENSIONS and text.lstrip().startswith("{")):
        notebook = _read_ipynb(path, text)
    elif suffix in TEXT_NOTEBOOK_EXTENSIONS:
        notebook = _read_text(path, text, suffix)
    else:
        raise NotANotebook(path, f"'{suffix or 'no extension'}' files are not notebooks")
    limits.check_cells(path, notebook.cells)
    return notebook


def _kernel_language(metadata: dict) -> str | None:
    ks = metadata.get("kernelspec") if isinstance(metadata.get("kernelspec"), dict) else {}
    li = metadata.get("language_info") if isinstance(metadata.get("language_info"), dict) else {}
    lang = ks.get("language") or li.get("name") or metadata.get("language")
    if not lang and isinstance(ks.get("name"), str):
        name = ks["name"].lower()
        lang = "r" if name in ("ir", "r") else "julia" if name.startswith("julia") else None
    return lang.lower() if isinstance(lang, str) else None


def json_error_text(err: json.JSONDecodeError) -> str:
    """`Expecting value at line 3 column 5`; json's own message for an open string already ends
    in "starting at", which must not read "starting at at line 17"."""
    where = f"line {err.lineno} column {err.colno}"
    msg = err.msg.rstrip()
    return f"{msg} {where}" if msg.endswith(" at") else f"{msg} at {where}"


def _read_ipynb(path: str, text: str) -> Notebook:
    if not text.strip():
        raise NotebookError(path, "empty file: not a notebook")
    try:
        parsed = ipynb.parse(text)
    except json.JSONDecodeError as err:
        raise NotebookError(path, f"not valid JSON: {json_error_text(err)}") from None
    except ipynb.JsonShapeError as err:
        raise NotebookError(path, f"not a notebook: {err}") from None
    except RecursionError:
        raise NotebookError(path, "not a notebook: JSON nested too deeply") from None
    metadata = parsed.data.get("metadata") if isinstance(parsed.data.get("metadata"), dict) else {}
    cells = []
    for i, c in enumerate(parsed.cells):
        cell_type = "markdown" if c["cell_type"] == "heading" else c["cell_type"]
        cid = c.get("id") if isinstance(c.get("id"), str) else None
        md = c.get("metadata") if isinstance(c.get("metadata"), dict) else {}
        cells.append(Cell(i, cell_type, ipynb.cell_source(c, parsed.nbformat), cid, md))
    language = _kernel_language(metadata)
    if parsed.nbformat == 3 and language is None:
        languages = {c.get("language") for c in parsed.cells if c.get("cell_type") == "code"}
        language = next(iter(languages)) if len(languages) == 1 else None
    read_only = None
    if parsed.nbformat == 3:
        read_only = "it is nbformat 3; upgrade it first with `jupyter nbconvert --to notebook --inplace`"
    return Notebook(path, "ipynb", cells, language, text, read_only, _ipynb=parsed)


def _read_text(path: str, text: str, suffix: str) -> Notebook:
    from nbrefactor.notebook.safe_yaml import check_text_header

    check_text_header(text, path, commented=suffix == ".py")
    fast = _read_text_fast(path, text, suffix)
    if fast is not None:
        return fast
    from nbrefactor.notebook.text import jupytext_config

    config = jupytext_config(path)
    node = _jupytext_reads(path, text, suffix, config)
    jupytext_md = node.metadata.get("jupytext") if isinstance(node.metadata.get("jupytext"), dict) else {}
    info = jupytext_md.get("text_representation") if isinstance(jupytext_md.get("text_representation"), dict) else {}
    fmt = suffix.lstrip(".")
    if isinstance(info.get("format_name"), str) and info["format_name"]:
        fmt += ":" + info["format_name"]
    cells = [
        Cell(i, c.cell_type, c.source, None, dict(c.metadata)) for i, c in enumerate(node.cells)
    ]
    language = _kernel_language(node.metadata) or ("python" if suffix == ".py" else None)
    return Notebook(path, fmt, cells, language, text, None, _jupytext_node=node, _jupytext_config=config)


def _jupytext_reads(path: str, text: str, suffix: str, config):
    import jupytext  # only for the text notebooks the fast reader leaves, and to write text back

    try:
        return jupytext.reads(text, fmt=suffix.lstrip("."), config=config)
    except Exception as err:  # jupytext raises many types for malformed headers
        raise NotebookError(path, f"jupytext could not read it: {err}") from None


def _read_text_fast(path: str, text: str, suffix: str) -> Notebook | None:
    """The notebook as `fast_text` reads it (exactly jupytext's cells), or None where it is not
    sure: a format it does not read, or a jupytext configuration for the folder."""
    from nbrefactor.notebook import fast_text
    from nbrefactor.notebook.jupytext_settings import find_config
    from nbrefactor.notebook.text import _directory

    if suffix != ".py" or find_config(_directory(path)) is not None:
        return None
    got = fast_text.read(text, suffix)
    if got is None:
        return None
    cells = [Cell(i, t, s, None, md) for i, (t, s, md) in enumerate(got.cells)]
    language = _kernel_language(got.metadata) or "python"
    return Notebook(path, "py:" + got.format_name, cells, language, text, None)


def notebook_from_cells(cells: list[tuple[str, str]], path: str = "<example>.ipynb") -> Notebook:
    """An in-memory nbformat 4.5 notebook from (cell_type, source) pairs; used by rule examples."""
    nb = {
        "cells": [
            {"cell_type": t, "id": f"cell-{i}", "metadata": {}, "source": s}
            | ({"execution_count": None, "outputs": []} if t == "code" else {})
            for i, (t, s) in enumerate(cells)
        ],
        "metadata": {"kernelspec": {"language": "python", "name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return _read_ipynb(path, json.dumps(nb, indent=1) + "\n")


def split_example(text: str) -> list[tuple[str, str]]:
    """Cells from text written with `# %%` separators (`# %% [markdown]` for markdown cells).

    The rule examples and golden tests use it so that a reader sees the notebook as code.
    """
    cells: list[tuple[str, list[str]]] = []
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("# %%") and line == stripped:
            kind = "markdown" if "[markdown]" in stripped else "code"
            cells.append((kind, []))
            continue
        if not cells:
            if not stripped:
                continue  # blank lines before the first cell
            cells.append(("code", []))
        cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if kind == "markdown":
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        out.append((kind, "\n".join(lines)))
    return out
