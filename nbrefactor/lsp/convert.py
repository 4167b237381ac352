"""Between the editor's documents and nbrefactor's notebooks: pure functions, no server state.

An editor sends a notebook as cell documents (one text document per cell, in order) or a jupytext
notebook as one text document. nbrefactor works on its own `Notebook`, so the cells are made into
notebook JSON in memory (never read from disk, never run); findings come back as LSP diagnostics
on the cell they are in, and a fix of the whole notebook as one full-text edit per cell document
whose text changed. LSP positions count UTF-16 code units; nbrefactor counts characters.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from lsprotocol import types

SOURCE = "nbrefactor"
RULES_URL = "https://github.com/nbrefactor/nbrefactor#rules"  # the README's rule table (no per-rule anchors)
FIX_ALL = "source.fixAll.nbrefactor"
RULE_CODE = re.compile(r"NBR\d{3}")
_PYTHON_LANGUAGES = ("python", "python3", "ipython", "")
_JUPYTEXT_HEADER = re.compile(r"^#\s+jupytext:", re.MULTILINE)
_CELL_MARKER = re.compile(r"^# %%", re.MULTILINE)
UTF16 = "utf-16"


@dataclass(frozen=True)
class CellText:
    """One cell document as the editor has it."""

    uri: str
    kind: str  # "code", "markdown" or "raw" (a code cell in another language)
    text: str
    version: int | None = None


# --- documents and paths ---------------------------------------------------------------------


def path_of(uri: str) -> Path | None:
    """The file a `file:` URI names; None for `untitled:` and the like."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    return Path(unquote(parsed.path))


def notebook_name(uri: str, suffix: str = ".ipynb") -> str:
    """The notebook's path (for messages and the project's settings), or a name for an unsaved one."""
    path = path_of(uri)
    if path is not None:
        return str(path)
    return (unquote(urlparse(uri).path).rsplit("/", 1)[-1] or "Untitled") + ("" if uri.endswith(suffix) else suffix)


def cell_kind(kind: types.NotebookCellKind, language: str | None) -> str:
    if kind == types.NotebookCellKind.Markup:
        return "markdown"
    return "code" if (language or "").lower() in _PYTHON_LANGUAGES else "raw"


def is_jupytext_script(uri: str, text: str) -> bool:
    """A `.py` text document that is a notebook: a jupytext header or `# %%` cell markers."""
    if not unquote(urlparse(uri).path).endswith(".py"):
        return False
    return bool(_JUPYTEXT_HEADER.search(text[:4000]) or _CELL_MARKER.search(text))


def is_virtual_notebook(uri: str) -> bool:
    """A notebook as jupyterlab-lsp sends it: one text document of its code cells joined, under
    jupyter-lsp's `.virtual_documents` folder (checked as a notebook of one cell)."""
    return "/.virtual_documents/" in unquote(urlparse(uri).path)


def notebook_of_cells(cells: list[CellText], name: str):
    """nbrefactor's `Notebook` for the cells (cell ids `lsp-0`, `lsp-1`, ... give fixed cells
    back to their documents)."""
    from nbrefactor.notebook.model import read_notebook

    nb = {
        "cells": [_cell_json(i, c) for i, c in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    name = name if name.endswith(".ipynb") else name + ".ipynb"
    return read_notebook(name, data=(json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def _cell_json(i: int, cell: CellText) -> dict:
    out = {"cell_type": cell.kind, "id": f"lsp-{i}", "metadata": {}, "source": cell.text}
    if cell.kind == "code":
        out |= {"execution_count": None, "outputs": []}
    return out


def notebook_of_script(name: str, text: str):
    from nbrefactor.notebook.model import read_notebook

    return read_notebook(name, data=text.encode("utf-8"))


# --- positions -------------------------------------------------------------------------------


def units(line: str, column: int, encoding: str = UTF16) -> int:
    """The LSP character offset of the 0-based character `column` in `line`, counted in the
    position encoding agreed with the client (UTF-16 unless it asked for another)."""
    head = line[:column]
    if head.isascii() or encoding == "utf-32":
        return len(head)
    if encoding == "utf-8":
        return len(head.encode("utf-8"))
    return len(head.encode("utf-16-le")) // 2


def full_range(text: str, encoding: str = UTF16) -> types.Range:
    lines = text.split("\n")
    return types.Range(types.Position(0, 0), types.Position(len(lines) - 1, units(lines[-1], len(lines[-1]), encoding)))


def finding_range(d, lines: list[str], first_line: int = 0, encoding: str = UTF16) -> types.Range:
    """The range of a finding (1-based rows and columns inside its cell) in a document whose cell
    starts at `first_line` (0 for a cell document)."""

    def position(row: int, column: int) -> types.Position:
        line = lines[row - 1] if 0 < row <= len(lines) else ""
        return types.Position(first_line + row - 1, units(line, column - 1, encoding))

    return types.Range(position(d.row, d.column), position(d.end_row, d.end_column))


def cell_first_lines(notebook) -> list[int] | None:
    """For a jupytext text notebook: the 0-based file line of each cell's first source line, or
    None when the cells cannot be located."""
    from nbrefactor.notebook.text import TextLayoutError, cell_layout

    try:
        layout = cell_layout(notebook.raw, notebook.format, notebook._jupytext_config)
    except TextLayoutError:
        return None
    if len(layout.spans) != len(notebook.cells):
        return None
    return [_first_source_line(layout, span, cell) for span, cell in zip(layout.spans, notebook.cells)]


def _first_source_line(layout, span: tuple[int, int], cell) -> int:
    start, end = span
    first = cell.source.split("\n", 1)[0]
    for line in range(start, end):
        if layout.lines[line].rstrip("\r\n") == first:
            return line
    return start + 1 if start < end and layout.is_marker(layout.lines[start]) else start


# --- findings -> diagnostics -----------------------------------------------------------------


def diagnostic(d, lines: list[str], first_line: int = 0, encoding: str = UTF16) -> types.Diagnostic:
    return types.Diagnostic(
        range=finding_range(d, lines, first_line, encoding),
        message=d.message,
        severity=types.DiagnosticSeverity.Warning,
        code=d.code,
        code_description=types.CodeDescription(href=RULES_URL),
        source=SOURCE,
        data={"cell": d.cell, "row": d.row, "column": d.column},
    )


def cell_diagnostics(findings, cells: list[CellText], encoding: str = UTF16) -> dict[str, list[types.Diagnostic]]:
    """Cell document URI -> its diagnostics (every cell of the notebook has an entry)."""
    out: dict[str, list[types.Diagnostic]] = {c.uri: [] for c in cells}
    lines: dict[int, list[str]] = {}
    for d in findings:
        if not 0 < d.cell <= len(cells):
            continue
        cell = cells[d.cell - 1]
        if d.cell not in lines:
            lines[d.cell] = cell.text.split("\n")
        out[cell.uri].append(diagnostic(d, lines[d.cell], 0, encoding))
    return out


def script_diagnostics(findings, notebook, encoding: str = UTF16, warnings=()) -> list[types.Diagnostic]:
    """Diagnostics of a jupytext text notebook at their file positions (and a note per skipped cell)."""
    starts = cell_first_lines(notebook)
    out = []
    for d in findings:
        if not 0 < d.cell <= len(notebook.cells):
            continue
        first = starts[d.cell - 1] if starts is not None else 0
        out.append(diagnostic(d, notebook.cells[d.cell - 1].source.split("\n"), first, encoding))
    for w in warnings:
        if 0 < w.cell <= len(notebook.cells):
            out.append(skipped_note(w, starts[w.cell - 1] if starts is not None else 0))
    return out


def warning_diagnostics(warnings, cells: list[CellText]) -> dict[str, list[types.Diagnostic]]:
    """Cell document URI -> a note for each cell nbrefactor skipped (`note:` of `nbrefactor check`:
    a cell that is not Python, whose findings are therefore missing), on the line it names."""
    out: dict[str, list[types.Diagnostic]] = {}
    for w in warnings:
        if 0 < w.cell <= len(cells):
            out.setdefault(cells[w.cell - 1].uri, []).append(skipped_note(w))
    return out


def skipped_note(w, first_line: int = 0) -> types.Diagnostic:
    line = first_line + max((w.row or 1) - 1, 0)
    at = types.Range(types.Position(line, 0), types.Position(line, 0))
    return types.Diagnostic(range=at, message=f"nbrefactor: {w.message}", severity=types.DiagnosticSeverity.Information, source=SOURCE)


def problem_diagnostic(message: str) -> types.Diagnostic:
    """The one diagnostic for a notebook nbrefactor could not check (on the first line of cell 1)."""
    return types.Diagnostic(
        range=types.Range(types.Position(0, 0), types.Position(0, 0)),
        message=f"nbrefactor could not check this notebook: {message}",
        severity=types.DiagnosticSeverity.Information,
        source=SOURCE,
    )


# --- fixes -> edits --------------------------------------------------------------------------


def fixed_cell_texts(result, cells: list[CellText]) -> list[str]:
    """The text of each cell document after the fix `result`: a cell the fixer deleted becomes
    empty (an LSP 3.17 workspace edit cannot delete a notebook cell)."""
    after = {c.id: c.source for c in result.after.cells} if result.after is not None else {}
    return [after.get(f"lsp-{i}", "") if result.changed else c.text for i, c in enumerate(cells)]


def cell_edits(cells: list[CellText], texts: list[str], encoding: str = UTF16) -> types.WorkspaceEdit | None:
    """One full-text replacement per cell document whose text changes, or None when none does."""
    changes = [
        types.TextDocumentEdit(
            text_document=types.OptionalVersionedTextDocumentIdentifier(uri=c.uri, version=c.version),
            edits=[types.TextEdit(range=full_range(c.text, encoding), new_text=new)],
        )
        for c, new in zip(cells, texts)
        if new != c.text
    ]
    return types.WorkspaceEdit(document_changes=changes) if changes else None


def script_edit(uri: str, version: int | None, text: str, fixed: str, encoding: str = UTF16) -> types.WorkspaceEdit | None:
    if fixed == text:
        return None
    edit = types.TextEdit(range=full_range(text, encoding), new_text=fixed)
    doc = types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version)
    return types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(text_document=doc, edits=[edit])])


def fix_title(code: str, applicability: str) -> str:
    return f"Fix {code} (nbrefactor{', unsafe fix' if applicability == 'unsafe' else ''})"


# --- hover -----------------------------------------------------------------------------------


def code_at(line: str, character: int) -> str | None:
    """The rule code (`NBR101`) under the cursor in `line`, if any."""
    for m in RULE_CODE.finditer(line):
        if m.start() <= character <= m.end():
            return m.group()
    return None


def contains(r: types.Range, p: types.Position) -> bool:
    return (r.start.line, r.start.character) <= (p.line, p.character) <= (r.end.line, r.end.character)


def rule_hover(code: str) -> types.Hover | None:
    from codemods.rules import RULES_BY_CODE
    from nbrefactor.cli import rule_docs

    rule = RULES_BY_CODE.get(code)
    if rule is None:
        return None
    return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=rule_docs(rule)))


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientSettings:
    """What the editor's settings say; None: not said (the project's `[tool.nbrefactor]` applies)."""

    select: tuple[str, ...] | None = None
    ignore: tuple[str, ...] | None = None
    unsafe_fixes: bool | None = None
    devices: int | None = None
    problems: tuple[str, ...] = field(default=(), compare=False)


def client_settings(raw) -> ClientSettings:
    """Settings from initializationOptions or workspace/didChangeConfiguration: `{"select": [...],
    "ignore": [...], "unsafeFixes": true, "devices": 2}`, bare or under `"nbrefactor"`."""
    if isinstance(raw, dict) and isinstance(raw.get("nbrefactor"), dict):
        raw = raw["nbrefactor"]
    if not isinstance(raw, dict):
        return ClientSettings()
    problems: list[str] = []
    select = _codes(raw.get("select"), "select", problems)
    ignore = _codes(raw.get("ignore"), "ignore", problems)
    unsafe = raw.get("unsafeFixes", raw.get("unsafe-fixes", raw.get("unsafe_fixes")))
    if unsafe is not None and not isinstance(unsafe, bool):
        problems.append("setting unsafeFixes must be true or false")
        unsafe = None
    devices = raw.get("devices")
    if devices is not None and (isinstance(devices, bool) or not isinstance(devices, int) or devices < 1):
        problems.append("setting devices must be a positive whole number")
        devices = None
    return ClientSettings(select, ignore, unsafe, devices, tuple(problems))


def _codes(value, key: str, problems: list[str]) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in re.split(r"[\s,]+", value) if v]
    if not isinstance(value, list) or not all(isinstance(v, str) and re.fullmatch(r"[A-Za-z]+[0-9]*", v) for v in value):
        problems.append(f'setting {key} must be a list of rule codes or prefixes such as ["NBR1", "NBR201"]')
        return None
    from nbrefactor.config import validate_codes
    from nbrefactor.errors import NotebookError

    codes = tuple(v.upper() for v in value)
    try:  # as `--select BOGUS` is refused: a selector that matches no rule would silently check nothing
        validate_codes(codes, _rule_codes(), f"setting {key}")
    except NotebookError as err:
        problems.append(f"{err.one_line()}; the setting is ignored")
        return None
    return codes


def _rule_codes() -> list[str]:
    from nbrefactor.cli import _rule_codes

    return _rule_codes()


@dataclass(frozen=True)
class Options:
    """The settings one notebook is checked and fixed with: the editor's over the project's."""

    selection: object
    unsafe_fixes: bool
    devices: int | None
    limits: object


def options_for(uri: str, client: ClientSettings) -> Options:
    """The project's `[tool.nbrefactor]` (for a `file:` notebook) with the editor's settings over it."""
    from nbrefactor.config import Selection, Settings, load_settings, validate_codes
    from nbrefactor.errors import NotebookError

    path = path_of(uri)
    project = load_settings(path.parent) if path is not None else Settings()
    select = client.select if client.select is not None else tuple(project.select) + tuple(project.extend_select)
    ignore = client.ignore if client.ignore is not None else tuple(project.ignore)
    unsafe = client.unsafe_fixes if client.unsafe_fixes is not None else project.unsafe_fixes
    for key, codes in (("select", select if client.select is None else ()), ("ignore", ignore if client.ignore is None else ())):
        try:  # refused as `nbrefactor check` refuses it
            validate_codes(codes, _rule_codes(), key)
        except NotebookError as err:
            raise NotebookError(project.source, f"[tool.nbrefactor] {key}: {err.message}") from None
    return Options(Selection(select or ("ALL",), ignore), unsafe, client.devices, project.limits)
