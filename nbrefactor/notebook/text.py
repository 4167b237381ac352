"""Write a jupytext text notebook back by cell, so that everything a fix does not touch stays byte
for byte (header, cell markers, blank lines, comments between cells).

jupytext reads a text notebook in one loop: the header, then one cell reader per cell, each saying
how many lines its cell takes (marker, content, the blank lines before the next cell). `cell_layout`
runs that same loop (jupytext's own header parser and cell readers, so the boundaries are the
format's rules, not a guess) and records each cell's span of lines. `splice` replaces the span of a
changed cell by that cell as jupytext writes it (keeping the original marker line as spelled, or
no marker where it had none), drops the spans of removed cells, and keeps the blank lines after an
edited cell unless jupytext would then read different `lines_to_next_cell` metadata (the blank
lines jupytext expects between cells follow PEP 8, so an edit can change them): then it uses the
number that reads as before. The result is read back with jupytext and must give exactly the
expected cells with their metadata; if it does not (or the format is one without cell readers, such
as MyST or Quarto), `TextLayoutError` says why and nothing is written.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

_UNSPLICEABLE = ("pandoc", "quarto", "marimo", "myst")
_DERIVED_METADATA = ("lines_to_next_cell", "lines_to_end_of_cell_marker")


class TextLayoutError(Exception):
    """The cells of a text notebook could not be located, or the spliced text did not read back."""


@dataclass
class TextLayout:
    lines: list[str]  # the text's lines, line ends kept (split where jupytext splits)
    spans: list[tuple[int, int]]  # per cell of the notebook: [start, end) in `lines`
    is_marker: object  # line -> bool: is it a cell's start marker in this format
    is_end_marker: object  # line -> bool: is it an explicit end-of-cell marker (light's `# -`)
    read_cell: object  # lines (no line ends) -> (metadata, lines used) of the first cell, as jupytext reads it

    @property
    def prefix_end(self) -> int:
        return self.spans[0][0] if self.spans else len(self.lines)


# --- jupytext configuration --------------------------------------------------------------------


def jupytext_config(path: str | os.PathLike | None):
    """The jupytext configuration that applies to `path` (jupytext.toml, [tool.jupytext], ...), or
    None. Found and parsed by nbrefactor (`jupytext_settings`): data files only, never
    `.jupytext.py`, and not above the repository root."""
    return _config_for_dir(_directory(path))


def jupytext_config_file(path: str | os.PathLike | None) -> str | None:
    """The file `jupytext_config(path)` came from (None when there is no configuration)."""
    from nbrefactor.notebook.jupytext_settings import config_for_dir

    return config_for_dir(_directory(path))[1]


def _directory(path) -> str:
    if path is None or str(path) in ("-", ""):
        return os.getcwd()
    return os.path.dirname(os.path.abspath(str(path)))


def _config_for_dir(directory: str):
    from nbrefactor.notebook.jupytext_settings import config_for_dir

    return config_for_dir(directory)[0]


# --- locating cells ----------------------------------------------------------------------------


def _long_fmt(text: str, fmt: str | dict):
    from jupytext.formats import (
        guess_format,
        long_form_one_format,
        read_format_from_metadata,
    )

    fmt = long_form_one_format(copy.copy(fmt))
    ext = fmt["extension"]
    format_name = read_format_from_metadata(text, ext) or fmt.get("format_name")
    if format_name:
        options = {}
    else:
        format_name, options = guess_format(text, ext)
    if format_name:
        fmt["format_name"] = format_name
    fmt.update(options)
    return fmt


def cell_layout(text: str, fmt: str | dict, config=None) -> TextLayout:
    """Where each cell of `text` lies, found by jupytext's own reading loop."""
    from jupytext.header import header_to_metadata_and_cell
    from jupytext.jupytext import TextNotebookConverter
    from jupytext.languages import default_language_from_metadata_and_ext

    fmt = _long_fmt(text, fmt)
    name = fmt.get("format_name") or ""
    if name in _UNSPLICEABLE or name.startswith("sphinx"):
        raise TextLayoutError(f"the {name} format cannot be rewritten cell by cell")
    try:
        converter = TextNotebookConverter(fmt, config)
        impl = converter.implementation
        lines = text.splitlines(keepends=True)
        bare = text.splitlines()
        root_as_raw = converter.fmt.get(
            "root_level_metadata_as_raw_cell",
            config.root_level_metadata_as_raw_cell if config is not None else True,
        )
        metadata, _, header_cell, pos = header_to_metadata_and_cell(
            bare, impl.header_prefix, impl.header_suffix, impl.extension, root_as_raw
        )
        default_language = default_language_from_metadata_and_ext(metadata, impl.extension)
        converter.update_fmt_with_notebook_options(metadata, read=True)
        spans: list[tuple[int, int]] = []
        if header_cell:
            spans.append((0, pos))
        start = pos
        reader = None
        while start < len(bare):
            reader = impl.cell_reader_class(converter.fmt, default_language)
            _, used = reader.read(bare[start:])
            if used <= 0:
                raise TextLayoutError(f"no cell boundary found at line {start + 1}")
            spans.append((start, start + used))
            start += used
        def read_cell(cell_lines: list[str]) -> tuple[dict, int]:
            cell, used = impl.cell_reader_class(converter.fmt, default_language).read(cell_lines)
            return cell.metadata, used

        probe = impl.cell_reader_class(converter.fmt, default_language)
    except TextLayoutError:
        raise
    except Exception as err:  # jupytext internals: any failure means we cannot locate the cells
        raise TextLayoutError(f"could not locate the cells ({type(err).__name__}: {err})") from None
    patterns = [getattr(probe, a, None) for a in ("start_code_re", "alternative_start_code_re")]
    patterns = [p for p in patterns if p is not None]

    end = getattr(probe, "end_code_re", None)
    if end is None and name == "light":  # set per cell while reading; `# -` unless `endofcell` says otherwise
        import re

        end = re.compile("^" + re.escape(getattr(probe, "comment", "#")) + r"\s*-\s*$")

    def is_marker(line: str) -> bool:
        line = line.rstrip("\r\n")
        return any(p.match(line) for p in patterns)

    def is_end_marker(line: str) -> bool:
        return end is not None and bool(end.match(line.rstrip("\r\n")))

    return TextLayout(lines, spans, is_marker, is_end_marker, read_cell)


# --- splicing ----------------------------------------------------------------------------------


def _is_blank(line: str) -> bool:
    return not line.strip()


def _content_and_blanks(lines: list[str]) -> tuple[list[str], int]:
    end = len(lines)
    while end and _is_blank(lines[end - 1]):
        end -= 1
    return lines[:end], len(lines) - end


def _newline_of(lines: list[str]) -> str:
    for line in lines:
        if line.endswith("\r\n"):
            return "\r\n"
        if line.endswith("\n"):
            return "\n"
    return "\n"


def _render_cell(node, index: int, source: str, fmt: str, config, newline: str) -> list[str]:
    """The lines of cell `index` with `source`, as jupytext writes it in this notebook's format.

    A plain code cell follows it in the rendering, so that an explicit end-of-cell marker (light
    format's `# -`) is written as it would be in the middle of a notebook."""
    import jupytext
    from nbformat.v4 import new_code_cell

    # The notebook's shell (metadata, nbformat) without its cells: a copy of every cell per changed
    # cell was quadratic in the notebook's size (2,500 cells: over 120 s).
    single = copy.deepcopy(type(node)({k: v for k, v in node.items() if k != "cells"}))
    cell = copy.deepcopy(node.cells[index])
    cell.source = source
    for key in _DERIVED_METADATA:
        cell.metadata.pop(key, None)
    single.cells = [cell, new_code_cell("pass")]
    text = jupytext.writes(single, fmt=fmt, config=config)
    layout = cell_layout(text, fmt, config)
    back = jupytext.reads(text, fmt=fmt, config=config)
    if len(layout.spans) != 2 or len(back.cells) != 2 or back.cells[0].source != source:
        raise TextLayoutError(
            f"cell {index + 1} as rewritten cannot be written as one cell of this format (a line in it reads as a cell marker)"
        )
    start, end = layout.spans[0]
    content, _ = _content_and_blanks(layout.lines[start:end])
    return [ln.rstrip("\r\n") + newline for ln in content]


def splice(node, raw: str, fmt: str, changed: dict[int, str], deleted=frozenset(), config=None) -> str:
    """`raw` (whose cells jupytext reads as `node`) with the `changed` cells' sources replaced and
    the `deleted` cells removed; every other line as it was.

    `node` may be a function that reads it: a percent script that nbrefactor's own reader reads is
    spliced without jupytext (`_splice_percent`), and jupytext reads it only where that declines."""
    fast = _splice_percent(raw, fmt, changed, deleted, config)
    if fast is not None:
        return fast
    return _splice_with_jupytext(node() if callable(node) else node, raw, fmt, changed, deleted, config)


def _splice_with_jupytext(node, raw: str, fmt: str, changed: dict[int, str], deleted, config) -> str:
    layout = cell_layout(raw, fmt, config)
    if len(layout.spans) != len(node.cells):
        raise TextLayoutError(f"found {len(layout.spans)} cells where jupytext reads {len(node.cells)}")
    newline = _newline_of(layout.lines)
    unmarked: dict[int, list[str]] = {}  # changed cells that had no start marker: their text without one

    def rewrite(i: int, content: list[str]) -> list[str]:
        new = _render_cell(node, i, changed[i], fmt, config, newline)
        if content and not layout.is_marker(content[0]) and new and layout.is_marker(new[0]):
            unmarked[i] = new[1:]
        return _keep_markers(layout, content, new, newline)

    pieces, blanks = _cell_pieces(layout, changed, rewrite)
    # A cell that started without a marker (the first cell of a script) keeps starting without
    # one, if it reads back that way; otherwise it gets jupytext's marker.
    attempts = [{**{i: pieces[i] for i in range(len(pieces))}, **unmarked}] if unmarked else []
    attempts.append({i: pieces[i] for i in range(len(pieces))})
    wanted = [c.metadata.get("lines_to_next_cell") for c in node.cells]
    for n, attempt in enumerate(attempts):
        text = _assemble(layout, wanted, [attempt[i] for i in range(len(pieces))], blanks, changed, deleted, raw, newline)
        try:
            _verify(text, node, fmt, config, changed, deleted)
            return text
        except TextLayoutError:
            if n == len(attempts) - 1:
                raise
    raise AssertionError("unreachable")


def _splice_percent(raw: str, fmt: str, changed: dict[int, str], deleted, config) -> str | None:
    """`splice` for a `.py` percent script, without jupytext: the cells located, a changed code
    cell written (under its own marker) and the result read back by `fast_text`, which reads
    exactly as jupytext does (tests/test_text_reader.py); the lines written for a changed cell are
    what jupytext's percent exporter writes (tests/test_text_writer.py). None wherever it is not
    sure (a configuration, options in the header, a cell magic, a cell without a marker, or a
    result that does not read back): `splice` then does it with jupytext."""
    from nbrefactor.notebook import fast_text

    name = fmt.split(":", 1)[1] if ":" in fmt else None
    if config is not None or fmt.split(":", 1)[0].lstrip(".") != "py" or name not in (None, "percent"):
        return None
    got = fast_text.read(raw, ".py")
    if got is None or got.format_name != "percent" or any(i >= len(got.cells) or got.cells[i][0] != "code" for i in changed):
        return None
    layout = TextLayout(raw.splitlines(keepends=True), got.spans, fast_text.is_percent_marker, lambda line: False,
                        lambda lines: fast_text.read_one_cell(lines, "percent"))
    newline = _newline_of(layout.lines)

    def rewrite(i: int, content: list[str]) -> list[str] | None:
        body = fast_text.percent_code_lines(changed[i])
        if not body or not content or not layout.is_marker(content[0]):
            return None  # jupytext writes this cell
        return _keep_markers(layout, content, ["# %%" + newline, *(ln + newline for ln in body)], newline)

    pieces, blanks = _cell_pieces(layout, changed, rewrite)
    if pieces is None:
        return None
    wanted = [metadata.get("lines_to_next_cell") for _, _, metadata in got.cells]
    text = _assemble(layout, wanted, pieces, blanks, changed, deleted, raw, newline)
    back = fast_text.read(text, ".py")
    if back is None or back.format_name != "percent" or _misread(back.cells, got.cells, changed, deleted):
        return None
    return text


def _cell_pieces(layout: TextLayout, changed: dict[int, str], rewrite):
    """(per cell: its lines up to the last non-blank one, per cell: the blank lines after it), with
    each changed cell's lines from `rewrite(index, lines)`; (None, None) when `rewrite` gives None."""
    pieces: list[list[str]] = []
    blanks: list[list[str]] = []
    for i, (start, end) in enumerate(layout.spans):
        content, n_blank = _content_and_blanks(layout.lines[start:end])
        if i in changed:
            content = rewrite(i, content)
            if content is None:
                return None, None
        pieces.append(content)
        blanks.append(layout.lines[end - n_blank : end])
    return pieces, blanks


def _assemble(layout, wanted_blanks, pieces, blanks, changed, deleted, raw, newline) -> str:
    """The text from each cell's lines and the blank lines after it (`wanted_blanks`: each cell's
    `lines_to_next_cell` metadata as read, or None)."""
    blanks = list(blanks)
    kept = [i for i in range(len(pieces)) if i not in deleted]
    # The blank lines after an edited cell, and after the cell before an edited or removed one.
    affected = set()
    for pos, i in enumerate(kept):
        nxt = kept[pos + 1] if pos + 1 < len(kept) else None
        if i in changed or (nxt is not None and (nxt in changed or nxt != i + 1)):
            affected.add(i)
        if nxt is None and i != len(pieces) - 1:
            affected.add(i)  # the cells after it were removed: it is now the last one
    for pos, i in enumerate(kept):
        if i in affected:
            following = [ln for j in kept[pos + 1 :] for ln in pieces[j] + blanks[j]]
            blanks[i] = _settle_blank_lines(layout, pieces[i], len(blanks[i]), following, wanted_blanks[i], newline)
    out = layout.lines[: layout.prefix_end] + [ln for i in kept for ln in pieces[i] + blanks[i]]
    text = "".join(out)
    if out and not raw.endswith(("\n", "\r")) and text.endswith(newline):
        text = text[: -len(newline)]
    elif raw.endswith(("\n", "\r")) and not text.endswith(("\n", "\r")):
        text += newline
    return text


def _keep_markers(layout, old: list[str], new: list[str], newline: str) -> list[str]:
    """The rendered cell `new`, with the original cell's start marker line (and end marker, in
    formats that have one) where the original had them: a marker's spelling and its options stay,
    and a cell that was delimited stays delimited (in the light format, the previous cell may end
    only because this one starts with a marker)."""
    if not old or not layout.is_marker(old[0]):
        return new
    first = old[0] if old[0].endswith(("\n", "\r")) else old[0] + newline
    if new and layout.is_marker(new[0]):
        return [first, *new[1:]]
    last = old[-1] if old[-1].endswith(("\n", "\r")) else old[-1] + newline
    closing = [last] if len(old) > 1 and layout.is_end_marker(old[-1]) else []
    return [first, *new, *closing]


def _settle_blank_lines(layout, content, current, following, wanted, newline) -> list[str]:
    """The blank lines after an edited cell: as many as before when jupytext reads that back as it
    read the original (the same `lines_to_next_cell`, usually none), else the number that makes it
    so, else a number that jupytext reads without `lines_to_next_cell`."""
    bare_following = [ln.rstrip("\r\n") for ln in following]
    bare_content = [ln.rstrip("\r\n") for ln in content]
    if not bare_content and not bare_following:
        return []
    derived = {}
    for n in dict.fromkeys([current, 1, 2, 0, 3]):
        try:
            metadata, used = layout.read_cell(bare_content + [""] * n + bare_following)
        except Exception:  # noqa: BLE001 - jupytext internals
            continue
        if used == len(bare_content) + n:
            derived[n] = metadata.get("lines_to_next_cell")
    for n, value in derived.items():
        if value == wanted:
            return [newline] * n
    for n, value in derived.items():
        if value is None:
            return [newline] * n
    return [newline] * current


def _comparable(metadata: dict) -> dict:
    """Cell metadata without what jupytext derives from blank lines (which can follow from an
    edit further down: PEP 8 spacing depends on the next code line)."""
    return {k: v for k, v in metadata.items() if k not in _DERIVED_METADATA}


def _verify(text, node, fmt, config, changed, deleted) -> None:
    import jupytext

    try:
        back = jupytext.reads(text, fmt=fmt, config=config)
    except Exception as err:  # noqa: BLE001
        raise TextLayoutError(f"the rewritten text does not read back ({err})") from None
    wrong = _misread(_cells(back.cells), _cells(node.cells), changed, deleted)
    if wrong:
        raise TextLayoutError(wrong)


def _cells(cells) -> list[tuple[str, str, dict]]:
    return [(c.cell_type, c.source, c.metadata) for c in cells]


def _misread(back: list[tuple[str, str, dict]], cells: list[tuple[str, str, dict]], changed, deleted) -> str | None:
    """What is wrong with `back`, the cells (type, source, metadata) read from a splice of a
    notebook whose cells were `cells`; None when they are those cells, changed and deleted."""
    expected = [(i, c) for i, c in enumerate(cells) if i not in deleted]
    if len(back) != len(expected):
        return f"the rewritten text reads back as {len(back)} cells instead of {len(expected)}"
    for (cell_type, source, metadata), (i, (want_type, want_source, want_metadata)) in zip(back, expected):
        if cell_type != want_type or source != changed.get(i, want_source):
            return f"cell {i + 1} does not read back as written"
        if _comparable(metadata) != _comparable(want_metadata):
            return f"the metadata of cell {i + 1} does not read back as it was"
    return None
