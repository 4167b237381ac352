"""jupytext pairs: a notebook kept as `.ipynb` and a text file (`.py`, `.md`) in step.

A notebook is paired when its metadata says so (`jupytext.formats`, written by
`jupytext --set-formats`) or a jupytext configuration file (`jupytext.toml`, `[tool.jupytext]` in
`pyproject.toml`, ...) pairs its folder. nbrefactor reads a pair as `jupytext --sync` does, with
jupytext's own functions: the inputs come from the most recently modified text file, unless the
`.ipynb` is newer; the outputs come from the `.ipynb`. It then writes every side (the `.ipynb`
first, text files after, as `jupytext --sync` does, so that the text file is the newer one) with
exactly what `jupytext --sync` would write from the fixed inputs, so that a later `--sync` has
nothing to do:

- the side the inputs came from is rewritten by cell (`Notebook.render`);
- the `.ipynb` of a pair read from its text side is the combination jupytext makes (the text's
  inputs, the `.ipynb`'s outputs, ids and filtered metadata), with the outputs of changed cells
  cleared;
- a text side that was exactly what jupytext writes stays exactly what jupytext writes; one whose
  cells were the `.ipynb`'s is rewritten by cell; a stale one is written from the fixed notebook,
  as `--sync` would.

Only files that exist are written: a declared partner that is missing is not created.

Partners lie inside the notebook's own folder tree, or, for pairing that comes from a jupytext
configuration file (found at or below the repository root, see `jupytext_settings`), inside that
file's folder tree (jupytext's prefix roots, `notebooks///ipynb,scripts///py:percent`, are relative
to it). Paths are resolved from the notebook's absolute path and then to real paths, so `..`, an
absolute prefix or a symbolic link cannot lead out: an existing partner outside is refused
(`PairOutsideFolder`: `fix` writes nothing, `check` checks the notebook alone).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

from nbrefactor.errors import NotebookError
from nbrefactor.notebook.model import Notebook, read_file, read_notebook


class PairOutsideFolder(NotebookError):
    """An existing partner the pairing names lies outside the notebook's folder tree (`..`, an
    absolute prefix, a symbolic link leading out): the pair is refused, nothing of it is written."""

    def __init__(self, path: object, message: str, partner: str = ""):
        super().__init__(path, message)
        self.partner = partner

    def __reduce__(self):
        return (self.__class__, (self.path, self.message, self.partner), {"cell": self.cell, "line": self.line})

    def checked_alone(self) -> str:
        """The note `check` gives: it checks the notebook by itself."""
        return f"{self.path}: jupytext pair {self.partner} is outside the notebook's folder; checked alone"


@dataclass
class PairFile:
    path: str
    fmt: dict  # jupytext's long form: extension, format_name, prefix, suffix
    data: bytes

    @property
    def is_ipynb(self) -> bool:
        return self.fmt.get("extension") == ".ipynb"

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")


@dataclass
class PairedNotebook:
    """A pair as read: every existing side's bytes, and the notebook the inputs come from."""

    named: str  # the path the user gave
    files: list[PairFile]  # the .ipynb (if any) first, then the text files in the order of `formats`
    inputs: PairFile
    notebook: Notebook  # the inputs side, read by nbrefactor (path: the inputs file)
    config: object | None

    @property
    def ipynb(self) -> PairFile | None:
        return next((f for f in self.files if f.is_ipynb), None)


# --- is it paired? (cheap first: most notebooks are not, and jupytext takes a moment to import) ---


def _config_file_near(path: Path) -> bool:
    return _config_file_in_or_above(str(path.parent))


def _config_file_in_or_above(directory: str) -> bool:
    """A jupytext configuration applies to the folder: found as `jupytext_settings` finds it (data
    files only, never `.jupytext.py`, not above the repository root, then the global folders)."""
    from nbrefactor.notebook.jupytext_settings import find_config

    return find_config(directory) is not None


def may_be_paired(path: str | os.PathLike, content: bytes | str | None = None) -> bool:
    """False when the file cannot be part of a pair (no pairing metadata, no jupytext config).
    `content`: the file's bytes or text, when the caller has them already.

    The words are looked for in the bytes as they are: in UTF-8 an ASCII byte is always that
    character (never part of another), and a byte that does not decode never becomes one, so
    this is what the decoded text says, without decoding every file found."""
    p = Path(path)
    if str(path) == "-":
        return False
    if content is None:
        try:
            content = read_file(p)
        except NotebookError:
            return False
    words = (b"formats", b"jupytext") if isinstance(content, bytes) else ("formats", "jupytext")
    if all(w in content for w in words):
        return True
    return _config_file_near(p.absolute())


# --- which files make the pair ----------------------------------------------------------------


def _metadata(path: str, text: str, config) -> dict:
    import jupytext

    if path.endswith(".ipynb"):
        import json

        try:
            data = json.loads(text)
        except ValueError:
            return {}
        md = data.get("metadata") if isinstance(data, dict) else None
        return md if isinstance(md, dict) else {}
    try:
        from nbrefactor.notebook.safe_yaml import check_text_header

        check_text_header(text, path, commented=path.endswith(".py"))
        return jupytext.reads(text, fmt=os.path.splitext(path)[1].lstrip("."), config=config).metadata
    except Exception:  # noqa: BLE001 - unreadable: not a pair (read_notebook reports it)
        return {}


def _odd_pairing_metadata(metadata: dict) -> str | None:
    """What is wrong with the pairing metadata's shape, in words (jupytext would fail on it with
    Python's own message), or None."""
    jupytext = metadata.get("jupytext")
    if jupytext is not None and not isinstance(jupytext, dict):
        return f"`jupytext` in the notebook's metadata must be a mapping, not {_kind(jupytext)}"
    for where, value in (("jupytext.formats", (jupytext or {}).get("formats")), ("jupytext_formats", metadata.get("jupytext_formats"))):
        if value is not None and not isinstance(value, str):
            return f'`{where}` in the notebook\'s metadata must be a string such as "ipynb,py:percent", not {_kind(value)}'
    text_repr = (jupytext or {}).get("text_representation")
    if text_repr is not None and not isinstance(text_repr, dict):
        return f"`jupytext.text_representation` in the notebook's metadata must be a mapping, not {_kind(text_repr)}"
    return None


def _kind(value) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def paired_files(path: str | os.PathLike, text: str | None = None) -> tuple[list[tuple[str, dict]], object] | None:
    """The existing files of the pair `path` belongs to (itself included) with their jupytext
    formats, and the jupytext config; None when it is not paired or its partners do not exist."""
    path = str(path)
    if text is None:
        text = read_file(path).decode("utf-8", errors="replace")
    if not may_be_paired(path, text):
        return None
    from jupytext.config import notebook_formats
    from jupytext.formats import long_form_multiple_formats
    from jupytext.paired_paths import (
        InconsistentPath,
        find_base_path_and_format,
        paired_paths,
    )

    from nbrefactor.notebook.text import jupytext_config, jupytext_config_file

    config = jupytext_config(path)
    metadata = _metadata(path, text, config)
    problem = _odd_pairing_metadata(metadata)
    if problem:
        raise NotebookError(path, f"jupytext pairing: {problem}; not paired, nothing read or written beside it")
    try:
        formats = notebook_formats({"metadata": metadata}, config, path, fallback_on_current_fmt=False)
    except Exception as err:  # noqa: BLE001 - a malformed `formats` string
        raise NotebookError(path, f"jupytext pairing: {err}") from None
    if not formats:
        return None
    formats = long_form_multiple_formats(formats)
    if len(formats) < 2:
        return None
    # Resolved from the absolute path, so that `..` in a prefix means the folder above whatever
    # the path was given as (jupytext resolves a relative path's `..` against the path's text).
    absolute = os.path.abspath(path)
    try:
        _, fmt = find_base_path_and_format(absolute, formats)
        fmt = dict(fmt)
        text_repr = metadata.get("jupytext", {}).get("text_representation", {}) if isinstance(metadata.get("jupytext"), dict) else {}
        if text_repr.get("extension") == fmt.get("extension") and text_repr.get("format_name") and "format_name" not in fmt:
            fmt["format_name"] = text_repr["format_name"]
        pairs = paired_paths(absolute, fmt, formats)
    except InconsistentPath as err:
        raise NotebookError(path, f"jupytext pairing: {err}") from None
    roots = _allowed_roots(absolute, None if _declares_formats(metadata) else jupytext_config_file(path))
    existing = []
    for p, f in pairs:
        if os.path.normpath(p) == absolute:
            existing.append((path, f))
            continue
        if _absolute_prefix(f.get("prefix")):  # jupytext reads it below the notebook's folder, or not at all
            shown = f.get("prefix").rsplit("/", 1)[0] + "/" + os.path.basename(p)
            raise PairOutsideFolder(path, f"jupytext pair {shown} is outside the notebook's folder (an absolute prefix); nothing written", shown)
        if not os.path.isfile(p):
            continue  # a missing partner is not part of the pair (it is never created)
        real = os.path.realpath(p)
        if not any(_is_under(real, root) for root in roots):
            shown = _shown_path(p, path)
            leads = f" (it leads to {real})" if os.path.normpath(real) != os.path.normpath(p) else ""
            raise PairOutsideFolder(path, f"jupytext pair {shown} is outside the notebook's folder{leads}; nothing written", shown)
        existing.append((_shown_path(p, path), f))
    if len(existing) < 2:
        return None
    return existing, config


def _absolute_prefix(prefix) -> bool:
    if not isinstance(prefix, str) or not prefix:
        return False
    return prefix.startswith(("/", "\\")) or (len(prefix) > 1 and prefix[1] == ":")


def _declares_formats(metadata: dict) -> bool:
    """The notebook names its pairing itself (rather than a configuration file)."""
    jupytext = metadata.get("jupytext")
    return bool((isinstance(jupytext, dict) and jupytext.get("formats")) or metadata.get("jupytext_formats"))


def _allowed_roots(absolute: str, config_file: str | None) -> list[str]:
    """Where a partner may lie: the notebook's own folder tree; for pairing that comes from a
    jupytext configuration file (found at or below the repository root) in a folder above the
    notebook, that file's folder tree too, since jupytext's prefix roots (`notebooks///ipynb,
    scripts///py:percent`) are relative to it."""
    folder = os.path.realpath(os.path.dirname(absolute))
    roots = [folder]
    if config_file:
        config_folder = os.path.realpath(os.path.dirname(config_file))
        if _is_under(folder, config_folder):
            roots.append(config_folder)
    return roots


def _is_under(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _shown_path(partner: str, named: str) -> str:
    """A partner's path as the user's own path was given: absolute for an absolute one, else
    relative to the current folder."""
    if os.path.isabs(named):
        return os.path.normpath(partner)
    try:
        return os.path.relpath(partner)
    except ValueError:  # another drive (Windows)
        return os.path.normpath(partner)


def pair_key(path: str | os.PathLike) -> frozenset | None:
    """The same value for every file of one pair (None when the file is not paired)."""
    try:
        found = paired_files(path)
    except NotebookError:
        return None
    if not found:
        return None
    return frozenset(os.path.realpath(p) for p, _ in found[0])


# --- reading ----------------------------------------------------------------------------------


def read_pair(path: str | os.PathLike, data: bytes | None = None) -> PairedNotebook | None:
    """The pair `path` belongs to, read as `jupytext --sync` reads it; None when it is unpaired."""
    try:
        return _read_pair(str(path), data)
    except NotebookError:
        raise
    except Exception as err:  # noqa: BLE001 - jupytext's pairing functions
        raise NotebookError(path, f"could not read its jupytext pair ({type(err).__name__}: {err})") from None


def _read_pair(path: str, data: bytes | None) -> PairedNotebook | None:
    from jupytext.pairs import latest_inputs_and_outputs

    if data is None:
        data = read_file(path)
    found = paired_files(path, data.decode("utf-8", errors="replace"))
    if not found:
        return None
    files_fmts, config = found
    contents = {path: data}
    files = []
    for p, fmt in files_fmts:
        raw = contents.get(p)
        if raw is None:
            raw = read_file(p)
        files.append(PairFile(p, dict(fmt), raw))
    files.sort(key=lambda f: 0 if f.is_ipynb else 1)

    def timestamp(p):
        try:
            return os.stat(p).st_mtime
        except OSError:
            return None

    me = next(f for f in files if f.path == path)
    inputs_file, _ = latest_inputs_and_outputs(path, me.fmt, [f.fmt for f in files], timestamp)
    inputs = next((f for f in files if f.path == inputs_file.path), me)
    notebook = read_notebook(inputs.path, inputs.data)
    return PairedNotebook(path, files, inputs, notebook, config)


# --- writing ----------------------------------------------------------------------------------


def _ends_with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"  # as jupytext's own writer does


def _writes(nb, fmt: dict, config) -> str:
    import jupytext

    return _ends_with_newline(jupytext.writes(nb, fmt=fmt, config=config))


def _reads(text: str, fmt: dict, config):
    import jupytext

    return jupytext.reads(text, fmt=fmt, config=config)


def _kept_and_changed(result) -> tuple[list[int], dict[int, str]]:
    """Indices (in the notebook before the fix) of the cells kept, and the new source of the
    changed ones by that same index."""
    deleted = set(result.deleted_cells)
    kept = [c.index for c in result.before.cells if c.number not in deleted]
    after = result.after.cells
    if len(kept) != len(after):
        raise NotebookError(result.before.path, "internal error: the fixed notebook's cells do not match the original's")
    changed = {i: a.source for i, a in zip(kept, after) if result.before.cells[i].source != a.source}
    return kept, changed


def _clear(cell) -> None:
    if cell.get("cell_type") == "code":
        cell["outputs"] = []
        cell["execution_count"] = None


def pair_contents(pair: PairedNotebook, result) -> list[tuple[str, str, bytes]]:
    """See `_pair_contents`; jupytext's own failures become one line naming the pair."""
    try:
        return _pair_contents(pair, result)
    except NotebookError:
        raise
    except Exception as err:  # noqa: BLE001 - jupytext raises many types (versions, formats)
        raise NotebookError(pair.named, f"could not write its jupytext pair ({type(err).__name__}: {err}); nothing written") from None


def _pair_contents(pair: PairedNotebook, result) -> list[tuple[str, str, bytes]]:
    """(path, new text, bytes as read) for every side of the pair after `result` (a `FixResult` on
    `pair.notebook`), in the order to write them: the .ipynb first, text files last (the first
    listed text format last, so it is the newest, as `jupytext --sync` leaves it). Sides whose
    text does not change are listed too: they are checked for changes on disk like the others."""
    from jupytext.combine import combine_inputs_with_outputs

    config = pair.config
    kept, changed = _kept_and_changed(result)
    deleted = {c.index for c in result.before.cells if c.number in set(result.deleted_cells)}
    inputs = pair.inputs
    ipynb = pair.ipynb
    out: dict[str, str] = {inputs.path: result.fixed}

    if inputs.is_ipynb:
        final = _reads(result.fixed, inputs.fmt, config)
        old_final = _reads(inputs.text, inputs.fmt, config)
    else:
        new_inputs = copy.deepcopy(result.after._jupytext_nb)
        if ipynb is not None:
            old_ipynb_node = _reads(ipynb.text, ipynb.fmt, config)
            base = combine_inputs_with_outputs(copy.deepcopy(result.before._jupytext_nb), old_ipynb_node, fmt=inputs.fmt)
        else:
            base = copy.deepcopy(result.before._jupytext_nb)
        old_final = base
        cleared = copy.deepcopy(base)
        cleared.cells = [copy.deepcopy(base.cells[i]) for i in kept]
        for cell, i in zip(cleared.cells, kept):
            if i in changed:
                cell["source"] = changed[i]
                _clear(cell)
        final = combine_inputs_with_outputs(new_inputs, cleared, fmt=inputs.fmt) if ipynb is not None else new_inputs
        if ipynb is not None:
            out[ipynb.path] = _writes(final, ipynb.fmt, config)
        # A text file jupytext wrote stays what jupytext writes (what --sync will compare it with).
        if _writes(base, inputs.fmt, config) == inputs.text:
            out[inputs.path] = _writes(final, inputs.fmt, config)

    for f in pair.files:
        if f.path in out:
            continue
        if _writes(old_final, f.fmt, config) == f.text:
            out[f.path] = _writes(final, f.fmt, config)
            continue
        side = read_notebook(f.path, f.data)
        same_cells = [(c.cell_type, c.source) for c in side.cells] == [(c.cell_type, c.source) for c in result.before.cells]
        if same_cells:
            try:
                out[f.path] = side.render(changed, deleted)
                continue
            except NotebookError:
                pass
        out[f.path] = _writes(final, f.fmt, config)  # a stale side: what --sync writes

    ordered = [f for f in pair.files if f.is_ipynb] + [f for f in reversed(pair.files) if not f.is_ipynb]
    return [(f.path, out[f.path], f.data) for f in ordered]
