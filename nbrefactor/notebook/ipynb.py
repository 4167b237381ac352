"""Read and write `.ipynb` JSON so that everything a fix does not touch stays byte for byte.

Instead of `json.load` + `json.dump` (which would re-format the whole file), the reader records the
byte span of every cell in the original text, and the writer splices only the cells whose source
changed, serialised in the file's own style (indent, separators, ASCII escaping). nbformat is not
imported: it costs over a second at start-up and would normalise the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class JsonStyle:
    """How the file was written, so changed cells are written the same way."""

    indent: int | None = 1
    item_sep: str = ","
    key_sep: str = ": "
    ensure_ascii: bool = False
    trailing_newline: bool = True

    def dumps(self, value: Any, depth: int) -> str:
        """Serialise `value` as it would appear nested `depth` levels deep in the file."""
        text = json.dumps(
            value,
            indent=self.indent,
            ensure_ascii=self.ensure_ascii,
            separators=(self.item_sep, self.key_sep),
        )
        if self.indent:
            text = text.replace("\n", "\n" + " " * (self.indent * depth))
        return text


@dataclass
class IpynbFile:
    """The parsed JSON; where each cell sits in the original text and the file's JSON style are
    worked out only when a notebook is written (checking never needs them)."""

    text: str
    data: dict
    cells: list[dict]
    nbformat: int = 4

    @cached_property
    def _spans(self) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
        return _cell_spans(self.text)

    @property
    def cell_spans(self) -> list[tuple[int, int]]:
        """[start, end) offsets of each cell object in `text`."""
        return self._spans[0]

    @property
    def array_span(self) -> tuple[int, int] | None:
        """Offsets of the cells array's '[' and just after its ']'."""
        return self._spans[1]

    @cached_property
    def style(self) -> JsonStyle:
        return detect_style(self.text)


class JsonShapeError(ValueError):
    """The text is JSON but not shaped like a notebook."""


def _skip_ws(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()


def _scan_object_members(text: str, pos: int):
    """Yield (key, value_start) for each member of the object whose '{' is at `pos`; the caller
    parses the value and sends back its end offset."""
    assert text[pos] == "{"
    pos = _skip_ws(text, pos + 1)
    if text[pos] == "}":
        return pos + 1
    while True:
        if text[pos] != '"':
            raise JsonShapeError("expected a key")
        key, pos = json.decoder.scanstring(text, pos + 1)
        pos = _skip_ws(text, pos)
        if text[pos] != ":":
            raise JsonShapeError("expected ':'")
        pos = _skip_ws(text, pos + 1)
        pos = yield key, pos
        pos = _skip_ws(text, pos)
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if text[pos] == "}":
            return pos + 1
        raise JsonShapeError("expected ',' or '}'")


def _parse_array_with_spans(text: str, pos: int) -> tuple[list, list[tuple[int, int]], int]:
    assert text[pos] == "["
    items: list = []
    spans: list[tuple[int, int]] = []
    pos = _skip_ws(text, pos + 1)
    if text[pos] == "]":
        return items, spans, pos + 1
    while True:
        value, end = _DECODER.raw_decode(text, pos)
        items.append(value)
        spans.append((pos, end))
        pos = _skip_ws(text, end)
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if text[pos] == "]":
            return items, spans, pos + 1
        raise JsonShapeError("expected ',' or ']' in the cells list")


def detect_style(text: str) -> JsonStyle:
    """Infer indent, separators and escaping from the text itself."""
    indent: int | None = None
    m = re.match(r"\{\r?\n( +)\"", text.lstrip("\ufeff"))
    if m:
        indent = len(m.group(1))
    key_sep = ": " if re.search(r'"\s*:\s', text[:2000]) or indent else ":"
    if not re.search(r'"\s*: ', text[:2000]) and re.search(r'":', text[:2000]):
        key_sep = ":"
    item_sep = ", " if indent is None and re.search(r'", "', text[:2000]) else ","
    has_raw_non_ascii = not text.isascii()
    has_escaped_non_ascii = re.search(r"\\u(00[89a-fA-F]|0[1-9a-fA-F]|[1-9a-fA-F])[0-9a-fA-F]{2}", text) is not None
    ensure_ascii = has_escaped_non_ascii and not has_raw_non_ascii
    return JsonStyle(
        indent=indent,
        item_sep=item_sep,
        key_sep=key_sep,
        ensure_ascii=ensure_ascii,
        trailing_newline=text.endswith("\n"),
    )


def parse(text: str) -> IpynbFile:
    """Parse notebook JSON (nbformat 3 or 4), keeping each cell's span in `text`.

    Raises `json.JSONDecodeError` for text that is not JSON and `JsonShapeError` for JSON that is
    not a notebook.
    """
    # json's own parser validates (its message has line and column); the span scan that writing
    # needs then only ever sees well-formed JSON.
    data = json.loads(text.lstrip("\ufeff"))
    if not isinstance(data, dict):
        raise JsonShapeError(f"top-level JSON value is a {type(data).__name__}, not an object")
    cells = data.get("cells")
    nbformat = data.get("nbformat")
    if not isinstance(nbformat, int):
        raise JsonShapeError("no 'nbformat' version: this JSON is not a notebook")
    if nbformat == 4:
        if not isinstance(cells, list):
            raise JsonShapeError("nbformat 4 notebook without a 'cells' list")
    elif nbformat == 3:
        worksheets = data.get("worksheets")
        if not isinstance(worksheets, list):
            raise JsonShapeError("nbformat 3 notebook without 'worksheets'")
        cells = []
        for ws in worksheets:
            if not isinstance(ws, dict) or not isinstance(ws.get("cells", []), list):
                raise JsonShapeError("nbformat 3 worksheet without a 'cells' list")
            cells.extend(ws.get("cells", []))
    else:
        raise JsonShapeError(f"nbformat {nbformat} is not supported (only 3, read-only, and 4)")
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict) or not isinstance(cell.get("cell_type"), str):
            raise JsonShapeError(f"cell {i + 1} has no 'cell_type'")
        src = cell.get("input" if nbformat == 3 and cell["cell_type"] == "code" else "source", "")
        if not (isinstance(src, str) or (isinstance(src, list) and all(isinstance(s, str) for s in src))):
            raise JsonShapeError(f"cell {i + 1} has a 'source' that is not text")
    return IpynbFile(text, data, cells, nbformat)


def _cell_spans(text: str) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    """Where each cell object of the (valid) notebook JSON starts and ends, and the cells array."""
    start = _skip_ws(text, 1 if text.startswith("\ufeff") else 0)
    spans: list[tuple[int, int]] = []
    array_span = None
    members = _scan_object_members(text, start)
    try:
        key, pos = next(members)
        while True:
            if key == "cells" and text[pos] == "[":
                _, spans, end = _parse_array_with_spans(text, pos)
                array_span = (pos, end)
            else:
                _, end = _DECODER.raw_decode(text, pos)
            key, pos = members.send(end)
    except StopIteration:
        pass
    return spans, array_span


def cell_source(cell: dict, nbformat: int = 4) -> str:
    key = "input" if nbformat == 3 and cell["cell_type"] == "code" else "source"
    src = cell.get(key, "")
    return src if isinstance(src, str) else "".join(src)


def _with_source(cell: dict, source: str, clear_outputs: bool) -> dict:
    """A copy of `cell` with the new source, in the same representation (list of lines or str)."""
    new = dict(cell)
    new["source"] = source.splitlines(True) if isinstance(cell.get("source"), list) else source
    if clear_outputs and new.get("cell_type") == "code":
        if "outputs" in new:
            new["outputs"] = []
        if "execution_count" in new:
            new["execution_count"] = None
    return new


def render(nb: IpynbFile, new_cells: list[tuple[int | None, dict | str]]) -> str:
    """Write the notebook with a new cell list.

    `new_cells` holds, in order, `(original_index, source)` for kept cells (source unchanged means
    the original bytes are reused; a changed source is spliced in with outputs cleared) or
    `(None, cell_dict)` for cells the fix created. Cells not listed are dropped.
    """
    if nb.nbformat != 4 or nb.array_span is None:
        raise JsonShapeError("only nbformat 4 notebooks can be written")
    text, style = nb.text, nb.style
    unchanged = [i for i, v in new_cells if i is not None and isinstance(v, str) and v == cell_source(nb.cells[i])]
    if len(unchanged) == len(new_cells) == len(nb.cells) and unchanged == list(range(len(nb.cells))):
        return text
    pieces: list[str] = []
    for index, value in new_cells:
        if index is not None and isinstance(value, str):
            if value == cell_source(nb.cells[index]):
                start, end = nb.cell_spans[index]
                pieces.append(text[start:end])
            else:
                pieces.append(style.dumps(_with_source(nb.cells[index], value, True), depth=2))
        else:
            assert isinstance(value, dict)
            pieces.append(style.dumps(value, depth=2))
    open_at, close_after = nb.array_span
    if style.indent:
        inner = "\n" + " " * style.indent * 2
        sep = style.item_sep + inner
        body = ("[" + inner + sep.join(pieces) + "\n" + " " * style.indent + "]") if pieces else "[]"
    else:
        body = "[" + (style.item_sep).join(pieces) + "]"
    # Reuse the original separators where the list keeps its length, so a file with its own
    # spacing between cells only changes inside the changed cells.
    if len(pieces) == len(nb.cells) and nb.cells:
        gaps = [text[nb.cell_spans[i][1] : nb.cell_spans[i + 1][0]] for i in range(len(nb.cells) - 1)]
        head = text[open_at : nb.cell_spans[0][0]]
        tail = text[nb.cell_spans[-1][1] : close_after]
        body = head + "".join(p + g for p, g in zip(pieces, gaps + [""])) + tail
    return text[:open_at] + body + text[close_after:]
