"""`fix` for one notebook: check, apply the codemods, write back by cell, repeat until nothing changes.

Each pass analyses the notebook afresh and applies the first of the declared fixes
(`codemods.fixes.FIXES`, in their stated order) that changes it and passes the semantic gate, so
every codemod works on facts that describe the module it edits, and no fix leaves a name unbound
where the kernel reads it. The result is the new file text; nothing is written here.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

from nbrefactor.checker import Diagnostic, NotebookCheck, check_notebook, collector_paused, context_of, find_in, node_positions
from nbrefactor.config import Selection
from nbrefactor.notebook.join import CellBoundaryError
from nbrefactor.notebook.model import Notebook, read_notebook

MAX_PASSES = 12  # each pass applies one declared fix; a fixed point comes well before


@dataclass(frozen=True)
class Change:
    code: str
    cell: int  # 1-based over all cells, in the notebook as it was before this change
    message: str


@dataclass
class FixResult:
    path: str
    original: str
    fixed: str
    changes: list[Change] = field(default_factory=list)
    remaining: list[Diagnostic] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    before: Notebook | None = None
    after: Notebook | None = None
    deleted_cells: list[int] = field(default_factory=list)  # 1-based numbers in the original

    @property
    def changed(self) -> bool:
        return self.fixed != self.original


def _one_pass(check: NotebookCheck, options, refused: list[str]):
    """(the step, changes) for the first declared fix that changes the notebook and passes the
    semantic gate, or (None, [])."""
    from codemods.fixes import next_step

    step = next_step(check.facts, options, refused)
    if step is None:
        return None, []
    cell_of = _cells_of_nodes(check, [where for _, where, _ in step.changes if not isinstance(where, int)])
    changes = [Change(code, where + 1 if isinstance(where, int) else cell_of[id(where)], message) for code, where, message in step.changes]
    return step, changes


def _cells_of_nodes(check: NotebookCheck, nodes: list) -> dict[int, int]:
    """id(node) -> the 1-based cell of each node.

    A node inside a top-level statement whose lines (after its leading blank and comment lines)
    all lie in one cell is in that cell: the statement's lines are counted as `node_positions`
    counts them, without resolving libcst's positions inside the statement (most of the cost).
    The other nodes (a statement across a cell marker, a node outside every statement) are
    placed by `node_positions`."""
    if not nodes:
        return {}
    module, joined = check.module, check.joined  # libcst's: the fixer's checks are never `for_reading`
    out = _cells_by_statement(module, joined, nodes)
    rest = [n for n in nodes if id(n) not in out]
    if rest:
        positions = node_positions(module, rest, joined=joined)
        out.update({id(n): joined.locate(positions[n].start.line)[0] + 1 for n in rest})
    return out


def _cells_by_statement(module, joined, nodes: list) -> dict[int, int]:
    from nbrefactor.checker import statement_lines, statements_holding

    owned = statements_holding(module, nodes)
    out: dict[int, int] = {}
    for index, line, n_lines in statement_lines(module, joined, sorted(owned)):
        first, last = line + len(getattr(module.body[index], "leading_lines", ())), line + n_lines - 1
        try:
            cell = joined.locate(first)[0] if first <= last else None
            if cell is not None and joined.locate(last)[0] == cell:
                out.update((id(n), cell + 1) for n in owned[index])
        except ValueError:  # before the first cell (never expected): `node_positions` says
            pass
    return out


def _without_leading_blank_lines(sources: dict[int, str], notebook: Notebook) -> dict[int, str]:
    """A cell a fix rewrote starts with no more blank lines than it had (code moved out of its
    top, or a generated function placed first, leaves some); untouched cells keep theirs."""
    out = {}
    for i, source in sources.items():
        before = notebook.cells[i].source
        if source != before:
            had = _leading_blank_lines(before.split("\n"))
            lines = source.split("\n")
            while len(lines) > 1 and _leading_blank_lines(lines) > had:
                lines.pop(0)
            source = "\n".join(lines)
        out[i] = source
    return out


def _leading_blank_lines(lines: list[str]) -> int:
    return next((n for n, line in enumerate(lines) if line.strip()), len(lines))


def _is_empty(source: str) -> bool:
    lines = [ln for ln in source.split("\n") if ln.strip()]
    return not lines or (len(lines) == 1 and lines[0].startswith("%%"))


def _reread(notebook: Notebook, text: str) -> Notebook:
    """The fixed text read back the way `notebook` was read (a script stays one cell)."""
    if context_of(notebook) == "script":
        from nbrefactor.discover import read_script

        return read_script(notebook.path, text.encode("utf-8"))
    return read_notebook(notebook.path, text.encode("utf-8"))


def fix_notebook(
    notebook: Notebook,
    *,
    unsafe_fixes: bool = False,
    devices: int | None = None,
    selection: Selection = Selection(),
) -> FixResult:
    with collector_paused(notebook):
        return _fix_notebook(notebook, unsafe_fixes, devices, selection)


def _fix_notebook(notebook: Notebook, unsafe_fixes: bool, devices: int | None, selection: Selection) -> FixResult:
    """The passes run on cells in memory and the file is rendered once, at the end; the rendered
    file is read back and must give the cells the passes ended with. Where it does not (a text
    format reading the new code into other cells), the passes are run again, each rendered to the
    file and read back, so that every pass analyses exactly what the file will hold."""
    from codemods.kept import keeping_structure

    with keeping_structure():  # each pass analyses a module that differs from the last by one fix
        result = _run_passes(notebook, unsafe_fixes, devices, selection, in_memory=True)
        if result is None:
            result = _run_passes(notebook, unsafe_fixes, devices, selection, in_memory=False)
    return result


def _run_passes(notebook: Notebook, unsafe_fixes: bool, devices: int | None, selection: Selection, *, in_memory: bool) -> FixResult | None:
    result = FixResult(notebook.path, notebook.raw, notebook.raw, before=notebook)
    current = notebook
    origin = [c.index for c in notebook.cells]  # current cell index -> its index in the original
    from codemods.fixes import Options

    options = Options(unsafe_fixes=unsafe_fixes, devices=devices, enabled=selection.enabled, context=context_of(notebook))
    check = step = None
    for _ in range(MAX_PASSES):
        check = _check_after(current, selection, step)
        if check.facts is None:
            break
        refused: list[str] = []
        step, changes = _one_pass(check, options, refused)
        # What is refused is what the last pass refused: a refusal of an earlier pass may have
        # been lifted by the fixes after it.
        result.refused = list(dict.fromkeys(refused))
        new_code = step.code if step is not None else None
        if new_code is None or new_code == check.facts.code:
            break  # `check` describes `current`: its findings are what remains
        try:
            sources = _without_leading_blank_lines(check.joined.split(new_code), current)
        except CellBoundaryError as err:  # a codemod bug must never become a broken notebook
            result.refused.append(f"not rewritten: internal error, cell boundaries were not kept ({err})")
            break
        deleted = {i for i, s in sources.items() if _is_empty(s) and not _is_empty(current.cells[i].source)}
        result.deleted_cells = sorted([*result.deleted_cells, *(origin[i] + 1 for i in deleted)])
        result.changes.extend(changes)
        if in_memory:
            current = _with_sources(current, sources, deleted)
        else:
            current = _reread(current, current.render(sources, deleted=deleted))
        origin = [o for i, o in enumerate(origin) if i not in deleted]
        check = None  # the notebook changed: the next pass (or the end) checks it afresh
    if in_memory and current is not notebook:
        written = _render_once(notebook, current, origin, result.deleted_cells)
        if written is None:
            return None
        current = written
    result.fixed = current.raw
    result.after = current
    final = check if check is not None else _check_after(current, selection, step)
    find_in(final, selection)  # the passes analysed without the rules: only the last check's findings remain
    result.remaining = final.diagnostics
    return result


def _check_after(current: Notebook, selection: Selection, step) -> NotebookCheck:
    """The analysis of `current` (its findings are looked for at the end, `find_in`); after a fix
    `step`, the module the codemod built is analysed instead of parsing the same code again, where
    the cells join to exactly that code."""
    if step is None:
        check = check_notebook(current, selection, findings=False)
    else:
        from nbrefactor.notebook.join import parsed_as

        with parsed_as(step.code, step.module):
            check = check_notebook(current, selection, findings=False)
    if check.facts is not None and check.facts._code is None:
        # The module was parsed from the joined code, or is the codemod's module that printed as
        # exactly that code: libcst prints a module as the text it came from, so the facts take
        # that text instead of printing the module again (the codemods and the gate read it).
        check.facts._code = check.joined.code
    return check


class _InMemory(str):
    """The `raw` of a notebook the passes hold in memory: never a file's text (rendering such a
    notebook is refused). It names the cells' content, so that checks cached by text
    (`checker.reusing_checks`: the label probe's modes pass through the same notebooks) find it."""


def _with_sources(current: Notebook, sources: dict[int, str], deleted: set[int]) -> Notebook:
    """`current` with the new cell sources and without the deleted cells, in memory."""
    import copy

    cells = []
    for cell in current.cells:
        if cell.index not in deleted:
            cells.append(dataclasses.replace(cell, index=len(cells), source=sources.get(cell.index, cell.source)))
    new = copy.copy(current)
    new.cells = cells
    digest = hashlib.sha256()
    for cell in cells:
        digest.update(f"{cell.cell_type}\0{len(cell.source)}\0".encode())
        digest.update(cell.source.encode("utf-8", "surrogatepass"))
    new.raw = _InMemory(f"<in memory {digest.hexdigest()}>")
    new.read_only_reason = "internal: a notebook held in memory between passes is never written"
    return new


def _render_once(notebook: Notebook, current: Notebook, origin: list[int], deleted_numbers: list[int]) -> Notebook | None:
    """The original notebook rendered with the cells of `current` (cell `i` of `current` is cell
    `origin[i]` of the original) and read back; None when it does not read back as `current`."""
    sources = {o: cell.source for o, cell in zip(origin, current.cells)}
    text = notebook.render(sources, deleted={n - 1 for n in deleted_numbers})
    written = _reread(notebook, text)
    if [(c.cell_type, c.source) for c in written.cells] != [(c.cell_type, c.source) for c in current.cells]:
        return None
    return written
