"""The language server: keeps the open notebooks, checks them, answers the editor.

A notebook is re-checked when it opens, is saved, or (after a short pause in typing, `DEBOUNCE`)
changes; checks run one at a time in a worker thread, within the project's limits
(`nbrefactor.limits.bounded`), and a check of a version that has since changed is dropped, never
published. Findings are published on each cell document; a cell that became clean gets an empty
list. Code actions fix the whole notebook in memory and send back what changed, cell by cell.
Nothing the server is sent is executed, and no error in one notebook stops the server.
"""

from __future__ import annotations

import asyncio
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import unquote

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from nbrefactor import __version__
from nbrefactor.lsp import convert
from nbrefactor.lsp.convert import CellText, ClientSettings, Options

DEBOUNCE = 0.15  # seconds of quiet after a change before the notebook is checked again

NOTEBOOK_SYNC = types.NotebookDocumentSyncOptions(
    notebook_selector=[
        types.NotebookDocumentFilterWithCells(
            notebook=notebook_type, cells=[types.NotebookCellLanguage(language="python")]
        )
        for notebook_type in ("jupyter-notebook", "*")
    ],
    save=True,
)


@dataclass(frozen=True)
class Snapshot:
    """A document as it was when a check started: a notebook's cells, or a jupytext script's text."""

    uri: str
    generation: int
    cells: list[CellText] | None = None
    text: str | None = None
    version: int | None = None


@dataclass
class Analysis:
    """One check of a snapshot, and what code actions later compute from it (kept until the next)."""

    snapshot: Snapshot
    options: Options | None = None
    notebook: object | None = None
    check: object | None = None
    problem: str | None = None
    labelled: list | None = None
    edits: dict = field(default_factory=dict)


class NotebookServer(LanguageServer):
    def __init__(self):
        super().__init__("nbrefactor", __version__, notebook_document_sync=NOTEBOOK_SYNC)
        self.settings = ClientSettings()
        self.generation: dict[str, int] = {}  # document uri -> changes seen (a newer one supersedes)
        self.pending: dict[str, asyncio.Task] = {}
        self.analyses: dict[str, Analysis] = {}
        self.shown: dict[str, list[types.Diagnostic]] = {}  # cell (or script) uri -> its published diagnostics
        self.cells_shown: dict[str, set[str]] = {}  # document uri -> cell uris with diagnostics
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nbrefactor-check")
        self.encoding = convert.UTF16  # the position encoding agreed in `initialize`

    # --- reading the editor's documents ------------------------------------------------------

    def snapshot(self, uri: str) -> Snapshot | None:
        generation = self.generation.get(uri, 0)
        notebook = self.workspace.get_notebook_document(notebook_uri=uri)
        if notebook is not None:
            return Snapshot(uri, generation, cells=[self.cell_text(c) for c in notebook.cells], version=notebook.version)
        doc = self.opened(uri)
        if doc is None:
            return None
        if convert.is_virtual_notebook(uri):  # jupyterlab-lsp: the whole notebook as one cell
            return Snapshot(uri, generation, cells=[CellText(uri, "code", doc.source, doc.version)], version=doc.version)
        return Snapshot(uri, generation, text=doc.source, version=doc.version)

    def opened(self, uri: str):
        """The text document the editor opened at `uri` (None if it did not: never read from disk)."""
        return self.workspace.text_documents.get(unquote(uri))

    def cell_text(self, cell: types.NotebookCell) -> CellText:
        doc = self.opened(cell.document)  # not `workspace.get_text_document`: for a cell the editor did not send, it reads the URI's file
        if doc is None:  # a client that left a cell's text out: an empty cell
            return CellText(cell.document, convert.cell_kind(cell.kind, None), "", None)
        return CellText(cell.document, convert.cell_kind(cell.kind, doc.language_id), doc.source, doc.version)

    def owner_of(self, uri: str) -> str:
        """The notebook a cell document belongs to, or the document itself."""
        notebook = self.workspace.get_notebook_document(cell_uri=uri)
        return notebook.uri if notebook is not None else uri

    # --- checking ----------------------------------------------------------------------------

    def schedule(self, uri: str, delay: float = 0.0) -> None:
        """Check `uri` after `delay` seconds; a check scheduled before (waiting or running) is superseded."""
        self.generation[uri] = self.generation.get(uri, 0) + 1
        earlier = self.pending.pop(uri, None)
        if earlier is not None:
            earlier.cancel()
        self.pending[uri] = asyncio.get_running_loop().create_task(self.recheck(uri, delay))

    async def recheck(self, uri: str, delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            snapshot = self.snapshot(uri)
            if snapshot is None:
                return
            loop = asyncio.get_running_loop()
            analysis = await loop.run_in_executor(self.worker, self.analyse, snapshot)
            if analysis is None or self.generation.get(uri) != snapshot.generation:
                return  # the document changed meanwhile: a newer check is on its way
            self.analyses[uri] = analysis
            if analysis.problem is not None:
                self.log(f"nbrefactor: {convert.notebook_name(uri)}: {analysis.problem}", types.MessageType.Warning)
            self.publish(analysis)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the server keeps going; the editor's log says why
            self.log(f"nbrefactor: checking {uri} failed:\n{traceback.format_exc()}", types.MessageType.Error)

    def analyse(self, snapshot: Snapshot) -> Analysis | None:
        """Worker thread: read and check the snapshot within the project's limits."""
        if self.generation.get(snapshot.uri) != snapshot.generation:
            return None  # superseded while it waited
        analysis = Analysis(snapshot)
        try:
            analysis.options = convert.options_for(snapshot.uri, self.settings)
            analysis.notebook, analysis.check = run_bounded(analysis.options, name_of(snapshot), read_and_check, snapshot, analysis.options)
        except Exception as err:  # noqa: BLE001 - a notebook nbrefactor cannot read is reported, not fatal
            analysis.problem = problem_text(err)  # logged by `recheck`: messages go out from the event loop only
        return analysis

    # --- publishing --------------------------------------------------------------------------

    def publish(self, analysis: Analysis) -> None:
        snapshot = analysis.snapshot
        if snapshot.cells is not None:
            self.publish_cells(snapshot, self.cell_diagnostics(analysis))
        else:
            self.publish_one(snapshot.uri, self.script_diagnostics(analysis), snapshot.version)

    def cell_diagnostics(self, analysis: Analysis) -> dict[str, list[types.Diagnostic]]:
        cells = analysis.snapshot.cells
        if analysis.problem is not None:
            return {c.uri: [convert.problem_diagnostic(analysis.problem)] if i == 0 else [] for i, c in enumerate(cells)}
        by_cell = convert.cell_diagnostics(analysis.check.diagnostics, cells, self.encoding)
        for uri, notes in convert.warning_diagnostics(analysis.check.warnings, cells).items():
            by_cell[uri] += notes
        return by_cell

    def script_diagnostics(self, analysis: Analysis) -> list[types.Diagnostic]:
        if analysis.problem is not None:
            return [convert.problem_diagnostic(analysis.problem)]
        return convert.script_diagnostics(analysis.check.diagnostics, analysis.notebook, self.encoding, analysis.check.warnings)

    def publish_cells(self, snapshot: Snapshot, by_cell: dict[str, list[types.Diagnostic]]) -> None:
        """Diagnostics for each cell that has some, and an empty list for each that had some."""
        before = self.cells_shown.get(snapshot.uri, set())
        versions = {c.uri: c.version for c in snapshot.cells}
        for uri in [*by_cell, *(u for u in before if u not in by_cell)]:
            diagnostics = by_cell.get(uri, [])
            if diagnostics or uri in before:
                self.publish_one(uri, diagnostics, versions.get(uri))
        self.cells_shown[snapshot.uri] = {uri for uri, found in by_cell.items() if found}

    def publish_one(self, uri: str, diagnostics: list[types.Diagnostic], version: int | None) -> None:
        if diagnostics:
            self.shown[uri] = diagnostics
        else:
            self.shown.pop(uri, None)
        self.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=uri, diagnostics=diagnostics, version=version))

    def forget(self, uri: str) -> None:
        """A closed document: its check dropped, its diagnostics cleared."""
        self.generation[uri] = self.generation.get(uri, 0) + 1
        task = self.pending.pop(uri, None)
        if task is not None:
            task.cancel()
        self.analyses.pop(uri, None)
        for cell in self.cells_shown.pop(uri, set()) | ({uri} if uri in self.shown else set()):
            self.publish_one(cell, [], None)

    def log(self, message: str, kind: types.MessageType = types.MessageType.Info) -> None:
        self.window_log_message(types.LogMessageParams(type=kind, message=message))

    # --- code actions ------------------------------------------------------------------------

    def current(self, uri: str) -> Analysis | None:
        """The analysis of the document `uri` belongs to, if it describes the document as it is now."""
        owner = self.owner_of(uri)
        analysis = self.analyses.get(owner)
        if analysis is None or analysis.check is None or self.generation.get(owner) != analysis.snapshot.generation:
            return None
        return analysis

    def code_actions(self, analysis: Analysis, params: types.CodeActionParams) -> list[types.CodeAction]:
        """Worker thread: a quick fix per rule code with a fix at the requested range, and fix-all."""
        wanted = params.context.only
        actions = []
        if _wanted(types.CodeActionKind.QuickFix, wanted):
            actions += quick_fixes(analysis, params.text_document.uri, params.range, self.encoding)
        if _wanted(convert.FIX_ALL, wanted):
            options = analysis.options
            edit = fix_edit(analysis, None, options.unsafe_fixes, options.devices, self.encoding)
            if edit is not None:
                actions.append(types.CodeAction(title="Fix all (nbrefactor)", kind=convert.FIX_ALL, edit=edit))
        return actions

    def hover(self, params: types.HoverParams) -> types.Hover | None:
        uri, at = params.text_document.uri, params.position
        doc = self.opened(uri)
        lines = doc.lines if doc is not None else []
        line = lines[at.line] if at.line < len(lines) else ""
        code = convert.code_at(line, at.character)
        if code is None:
            code = next((str(d.code) for d in self.shown.get(uri, []) if d.code and convert.contains(d.range, at)), None)
        return convert.rule_hover(code) if code else None


# --- the work on one snapshot (worker thread) -------------------------------------------------


def name_of(snapshot: Snapshot) -> str:
    return convert.notebook_name(snapshot.uri, ".ipynb" if snapshot.cells is not None else ".py")


def run_bounded(options: Options, name: str, work, *args):
    from nbrefactor import limits

    limits.configure(options.limits)
    return limits.bounded(name, work, *args)


def read_and_check(snapshot: Snapshot, options: Options):
    from nbrefactor.checker import check_notebook

    name = name_of(snapshot)
    if snapshot.cells is not None:
        notebook = convert.notebook_of_cells(snapshot.cells, name)
    else:
        notebook = convert.notebook_of_script(name, snapshot.text)
    return notebook, check_notebook(notebook, options.selection, for_reading=True)


def problem_text(err: Exception) -> str:
    from nbrefactor.errors import NotebookError

    if isinstance(err, NotebookError):
        return err.message if hasattr(err, "message") else str(err)
    return f"internal error ({type(err).__name__}: {err})"


def labelled(analysis: Analysis) -> list:
    """The findings with the fix `nbrefactor fix` would really apply (`nbrefactor.labels`)."""
    if analysis.labelled is None:
        from nbrefactor.labels import label

        options = analysis.options
        analysis.labelled = run_bounded(options, name_of(analysis.snapshot), label, analysis.check, options.selection)
    return analysis.labelled


def offered(d, options: Options) -> bool:
    """Whether a finding's fix is offered: safe ones always, unsafe ones with `unsafeFixes` (as
    ruff does), and a fix that needs `--devices N` only when the `devices` setting is given."""
    if d.applicability == "none" or (d.applicability == "unsafe" and not options.unsafe_fixes):
        return False
    return d.fix_needs is None or options.devices is not None


def quick_fixes(analysis: Analysis, uri: str, at: types.Range, encoding: str) -> list[types.CodeAction]:
    options = analysis.options
    shown = {_key(d): d for d in _diagnostics_of(analysis, uri, encoding)}
    by_code: dict[str, list] = {}
    for d in labelled(analysis):
        lsp = shown.get((d.cell, d.row, d.column, d.code))
        if lsp is not None and offered(d, options) and _overlaps(lsp.range, at):
            by_code.setdefault(d.code, []).append((d, lsp))
    actions = []
    for code, found in by_code.items():
        unsafe = any(d.applicability == "unsafe" for d, _ in found)
        edit = fix_edit(analysis, code, unsafe, options.devices, encoding)
        if edit is None:
            continue
        actions.append(
            types.CodeAction(
                title=convert.fix_title(code, "unsafe" if unsafe else "safe"),
                kind=types.CodeActionKind.QuickFix,
                diagnostics=[lsp for _, lsp in found],
                edit=edit,
                is_preferred=not unsafe,
            )
        )
    return actions


def _key(d: types.Diagnostic) -> tuple:
    data = d.data or {}
    return data.get("cell"), data.get("row"), data.get("column"), d.code


def _diagnostics_of(analysis: Analysis, uri: str, encoding: str) -> list[types.Diagnostic]:
    snapshot = analysis.snapshot
    if snapshot.cells is None:
        return convert.script_diagnostics(analysis.check.diagnostics, analysis.notebook, encoding)
    return convert.cell_diagnostics(analysis.check.diagnostics, snapshot.cells, encoding).get(uri, [])


def _overlaps(a: types.Range, b: types.Range) -> bool:
    return (a.start.line, a.start.character) <= (b.end.line, b.end.character) and (b.start.line, b.start.character) <= (
        a.end.line,
        a.end.character,
    )


def _wanted(kind: str, only: list[str] | None) -> bool:
    return not only or any(kind == o or kind.startswith(o + ".") for o in only)


def fix_edit(analysis: Analysis, code: str | None, unsafe: bool, devices: int | None, encoding: str) -> types.WorkspaceEdit | None:
    """The edit that fixes the whole notebook (only rule `code`'s findings when given)."""
    key = (code, unsafe, devices, encoding)
    if key not in analysis.edits:
        analysis.edits[key] = _fix_edit(analysis, code, unsafe, devices, encoding)
    return analysis.edits[key]


def _fix_edit(analysis: Analysis, code: str | None, unsafe: bool, devices: int | None, encoding: str) -> types.WorkspaceEdit | None:
    from nbrefactor.config import Selection
    from nbrefactor.fixer import fix_notebook

    options, snapshot = analysis.options, analysis.snapshot
    selection = options.selection if code is None else Selection(select=(code,), ignore=options.selection.ignore)
    name = name_of(snapshot)
    result = run_bounded(options, name, lambda: fix_notebook(analysis.notebook, unsafe_fixes=unsafe, devices=devices, selection=selection))
    if snapshot.cells is None:
        return convert.script_edit(snapshot.uri, snapshot.version, snapshot.text, result.fixed, encoding)
    return convert.cell_edits(snapshot.cells, convert.fixed_cell_texts(result, snapshot.cells), encoding)


# --- the protocol ----------------------------------------------------------------------------


def build() -> NotebookServer:
    server = NotebookServer()

    @server.feature(types.INITIALIZE)
    def initialize(ls: NotebookServer, params: types.InitializeParams):
        encoding = ls.workspace.position_encoding or convert.UTF16
        ls.encoding = getattr(encoding, "value", encoding)
        ls.settings = convert.client_settings(params.initialization_options)
        for problem in ls.settings.problems:
            ls.log(f"nbrefactor: {problem}", types.MessageType.Warning)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def configuration_changed(ls: NotebookServer, params: types.DidChangeConfigurationParams):
        if params.settings is None:  # a pull-model client's "something changed": nothing said, keep what was
            return
        ls.settings = convert.client_settings(params.settings)
        for problem in ls.settings.problems:
            ls.log(f"nbrefactor: {problem}", types.MessageType.Warning)
        for uri in list(ls.analyses) + [u for u in ls.pending if u not in ls.analyses]:
            ls.schedule(uri)

    @server.feature(types.NOTEBOOK_DOCUMENT_DID_OPEN)
    def notebook_opened(ls: NotebookServer, params: types.DidOpenNotebookDocumentParams):
        ls.schedule(params.notebook_document.uri)

    @server.feature(types.NOTEBOOK_DOCUMENT_DID_CHANGE)
    def notebook_changed(ls: NotebookServer, params: types.DidChangeNotebookDocumentParams):
        ls.schedule(params.notebook_document.uri, DEBOUNCE)

    @server.feature(types.NOTEBOOK_DOCUMENT_DID_SAVE)
    def notebook_saved(ls: NotebookServer, params: types.DidSaveNotebookDocumentParams):
        ls.schedule(params.notebook_document.uri)

    @server.feature(types.NOTEBOOK_DOCUMENT_DID_CLOSE)
    def notebook_closed(ls: NotebookServer, params: types.DidCloseNotebookDocumentParams):
        ls.forget(params.notebook_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def script_opened(ls: NotebookServer, params: types.DidOpenTextDocumentParams):
        doc = params.text_document
        if convert.is_jupytext_script(doc.uri, doc.text) or convert.is_virtual_notebook(doc.uri):
            ls.schedule(doc.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def script_changed(ls: NotebookServer, params: types.DidChangeTextDocumentParams):
        uri = params.text_document.uri
        doc = ls.opened(uri)
        if doc is not None and (convert.is_jupytext_script(uri, doc.source) or convert.is_virtual_notebook(uri) or uri in ls.analyses):
            ls.schedule(uri, DEBOUNCE)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def script_saved(ls: NotebookServer, params: types.DidSaveTextDocumentParams):
        if params.text_document.uri in ls.analyses:
            ls.schedule(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def script_closed(ls: NotebookServer, params: types.DidCloseTextDocumentParams):
        if ls.workspace.get_notebook_document(cell_uri=params.text_document.uri) is None:
            ls.forget(params.text_document.uri)

    @server.feature(
        types.TEXT_DOCUMENT_CODE_ACTION,
        types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.QuickFix, convert.FIX_ALL]),
    )
    async def code_action(ls: NotebookServer, params: types.CodeActionParams):
        analysis = ls.current(params.text_document.uri)
        if analysis is None:
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(ls.worker, ls.code_actions, analysis, params)
        except Exception:  # noqa: BLE001 - no actions, and the reason in the log
            ls.log(f"nbrefactor: code actions failed:\n{traceback.format_exc()}", types.MessageType.Error)
            return None

    @server.feature(types.TEXT_DOCUMENT_HOVER)
    def hover(ls: NotebookServer, params: types.HoverParams):
        return ls.hover(params)

    return server


def serve() -> None:
    """Serve on stdin/stdout; anything else printed goes to stderr, never into the protocol stream."""
    import sys

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr
    build().start_io(stdin, stdout)
