"""`check` for one notebook: read, join, parse once, analyse once, run the rules, place findings.

A check whose result is only read (`for_reading`: the CLI's check, the Lab endpoint, the language
server) builds the analysis's libcst nodes from the `ast` the join made of each cell
(`codemods.fast_tree`), which costs a fraction of libcst's parser; the fixer's checks parse with
libcst, whose module the codemods rewrite and print.

Findings are placed in the notebook's own terms: cell (1-based over all cells), row and column
inside the cell. Positions are computed only for notebooks that have findings, and a notebook
whose text never mentions Lightning, Fabric, a Trainer or Accelerate is not analysed at all.
"""

from __future__ import annotations

import contextlib
import gc
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nbrefactor.config import Selection
from nbrefactor.diagnostic import Diagnostic  # noqa: F401 - defined apart so that printing a cached result imports no parser
from nbrefactor.notebook.model import Notebook

if TYPE_CHECKING:  # libcst and the join load only for notebooks that are analysed (see _RELEVANT)
    import libcst as cst

    from nbrefactor.notebook.join import JoinedNotebook

# Every rule needs at least one of these in the code; a notebook without them has nothing to find.
_RELEVANT = re.compile(r"lightning|Fabric|Trainer|notebook_launcher|Accelerator|set_start_method|DDPStrategy|multiprocessing")
_NOQA = re.compile(r"#\s*noqa(?::\s*(?P<codes>[A-Z]+[0-9]+(?:[\s,]+[A-Z]+[0-9]+)*))?", re.IGNORECASE)


@dataclass
class CellWarning:
    """Something the user should know that is not a finding: a cell nbrefactor could not read."""

    path: str
    cell: int
    row: int | None
    message: str


@dataclass
class NotebookCheck:
    notebook: Notebook
    diagnostics: list[Diagnostic] = field(default_factory=list)
    warnings: list[CellWarning] = field(default_factory=list)
    joined: JoinedNotebook | None = None
    module: cst.Module | None = None
    facts: object | None = None
    found: bool = True  # the rules were run (`check_notebook(..., findings=False)` leaves it to `find_in`)


def parse_joined(notebook: Notebook, *, for_reading: bool = False) -> tuple[JoinedNotebook, cst.Module, list[CellWarning]]:
    """The joined notebook, its module and the warnings for cells that are not Python.

    `for_reading`: the module is only read (a check's findings): it is built from the `ast` the
    join already made (`codemods.fast_tree`), not parsed by libcst, when the builder can."""
    import libcst as cst

    from nbrefactor.notebook.join import join, parse_module

    joined = join(notebook, for_reading=for_reading)
    module = None
    if for_reading:
        from codemods.fast_tree import build

        module = build(joined.code, _cell_trees(joined))
        if module is None:  # the builder is not sure: libcst parses the module
            parse_module(joined)
    warnings = [
        CellWarning(notebook.path, c.index + 1, c.parse_error_line, f"cell skipped, not Python: {c.parse_error}")
        for c in joined.opaque_cells
        if not c.parse_error.startswith("cell magic")  # another language on purpose: nothing to say
    ]
    if module is None:
        module = joined.module if joined.module is not None else cst.parse_module(joined.code)
    return joined, module, warnings


def _cell_trees(joined: JoinedNotebook):
    """Each cell's `ast` with the lines before it, handed over one at a time (a tree is let go
    once built from: a notebook's trees and its built nodes are not all held at once)."""
    for c in joined.cells:
        tree, c.tree = c.tree, None
        if tree is not None:
            yield c.first_line - 1, tree


_reused: dict | None = None  # (path, text, selection) -> NotebookCheck, while `reusing_checks` runs


@contextlib.contextmanager
def reusing_checks(*seed: NotebookCheck, selection: Selection):
    """Within this block, checking the same notebook text twice analyses it once.

    `nbrefactor.labels` fixes a notebook in memory in several modes; every mode starts by
    checking the original (seeded here from `check`'s own result) and often passes through the
    same intermediate notebooks. Outside the block nothing is kept."""
    global _reused
    outer = _reused
    _reused = {} if outer is None else outer
    for c in seed:
        _reused[(c.notebook.path, c.notebook.raw, _selection_key(selection))] = c
    try:
        yield
    finally:
        _reused = outer


def _take_findings(check: NotebookCheck, seed: NotebookCheck) -> None:
    """A fixer's check of the text a reading check (`seed`, on the tree built from `ast`) already
    checked takes its findings: the two trees give the same findings (tests/test_fast_tree.py),
    where the same cells are Python in both (libcst's join makes a cell it rejects opaque)."""
    if seed.found and seed.joined is not None and check.facts is not None and not check.found and \
            [c.index for c in check.joined.opaque_cells] == [c.index for c in seed.joined.opaque_cells]:
        check.diagnostics, check.found = list(seed.diagnostics), True


def _rewritable(check: NotebookCheck) -> bool:
    from codemods.fast_tree import BuiltModule

    return not isinstance(check.module, BuiltModule)


def _selection_key(selection: Selection):
    return (tuple(selection.select), tuple(selection.ignore))


def check_notebook(notebook: Notebook, selection: Selection, *, for_reading: bool = False, findings: bool = True) -> NotebookCheck:
    """The notebook's findings. `for_reading`: the caller reads the findings only and never hands
    the result's module or facts to a codemod (they may be built from `ast`, `codemods.fast_tree`,
    and do not print back as the source). `findings=False`: the analysis without the rules (the
    fixer's passes read the facts; `find_in` runs the rules on the check it ends with)."""
    if _reused is None:
        with collector_paused(notebook):
            return _check_notebook(notebook, selection, for_reading, findings)
    key = (notebook.path, notebook.raw, _selection_key(selection))
    if key not in _reused or not (for_reading or _rewritable(_reused[key])):
        seed = _reused.get(key)
        with collector_paused(notebook):
            _reused[key] = _check_notebook(notebook, selection, for_reading, findings and seed is None)
        if seed is not None:
            _take_findings(_reused[key], seed)
    hit = _reused[key]
    if findings:
        find_in(hit, selection)
    return NotebookCheck(notebook, list(hit.diagnostics), list(hit.warnings), hit.joined, hit.module, hit.facts, hit.found)


PAUSE_COLLECTOR_FROM = 50_000  # characters of code: below, the collector's share is a few ms
_collector_lock = threading.Lock()
_collector_users = 0
_collector_was_enabled = False


@contextlib.contextmanager
def collector_paused(notebook: Notebook):
    """Python's cyclic garbage collector paused while a large notebook is worked on.

    Parsing and analysing a notebook makes millions of objects (libcst's tree, Python's `ast` for
    the gate) and no garbage cycles to speak of, yet every full collection walks all of them: a
    quarter to a third of the time on a notebook of 10,000 cells. Nested and concurrent uses are
    counted; the collector runs again when the last one ends, if it ran before the first."""
    global _collector_users, _collector_was_enabled
    if sum(len(c.source) for c in notebook.code_cells) < PAUSE_COLLECTOR_FROM:
        yield
        return
    with _collector_lock:
        if _collector_users == 0:
            _collector_was_enabled = gc.isenabled()
            gc.disable()
        _collector_users += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_users -= 1
            if _collector_users == 0 and _collector_was_enabled:
                gc.enable()


def context_of(notebook: Notebook) -> str:
    """"script" for a plain `.py` file read as one cell (`nbrefactor.discover.read_script`)."""
    return getattr(notebook, "context", "notebook")


def _check_notebook(notebook: Notebook, selection: Selection, for_reading: bool = False, findings: bool = True) -> NotebookCheck:
    result = NotebookCheck(notebook)
    if not any(_RELEVANT.search(c.source) for c in notebook.code_cells):
        return result
    from codemods.facts import analyse

    joined, module, warnings = parse_joined(notebook, for_reading=for_reading)
    result.joined, result.module, result.warnings = joined, module, warnings
    result.facts = analyse(module)
    result.found = False
    if findings:
        find_in(result, selection)
    return result


def find_in(result: NotebookCheck, selection: Selection) -> None:
    """Runs the rules on the facts of `result` and fills its diagnostics, unless that was done."""
    if result.found:
        return
    with collector_paused(result.notebook):
        _find(result, selection)
    result.found = True


def _find(result: NotebookCheck, selection: Selection) -> None:
    from codemods.rules import ALL_RULES, Finding

    notebook, joined, module, facts = result.notebook, result.joined, result.module, result.facts
    findings = []
    context = context_of(notebook)
    for rule in ALL_RULES:
        if not selection.enabled(rule.code) or context not in rule.contexts:
            continue
        checker = rule(context)
        for finding in checker.check(facts):
            findings.append((rule, Finding(finding.node, checker.worded(finding.message))))
    if not findings:
        return
    owners = {id(call): st.index for st in facts.statements for call in st.calls}
    positions = node_positions(module, [finding.node for _, finding in findings], owners, joined)
    seen = set()
    lines_of: dict[int, list[str]] = {}  # cell index -> its lines, split once (not per finding)
    for rule, finding in findings:
        span = positions[finding.node]
        cell_index, row = joined.locate(span.start.line)
        end_cell, end_row = joined.locate(span.end.line)
        if end_cell != cell_index:  # never expected: a node does not cross cell markers
            end_row, end_column = row, span.start.column + 1
        else:
            end_column = span.end.column + 1
        key = (rule.code, cell_index, row, span.start.column)
        if cell_index not in lines_of:
            lines_of[cell_index] = notebook.cells[cell_index].source.split("\n")
        if key in seen or _suppressed(lines_of[cell_index], row, rule.code):
            continue
        seen.add(key)
        result.diagnostics.append(
            Diagnostic(
                code=rule.code,
                name=rule.name,
                message=finding.message,
                path=notebook.path,
                cell=cell_index + 1,
                row=row,
                column=span.start.column + 1,
                end_row=end_row,
                end_column=end_column,
                applicability=rule.applicability.value,
                fix_title=rule.fix_title,
                context=context,
            )
        )
    result.diagnostics.sort(key=Diagnostic.sort_key)


def node_positions(module: cst.Module, nodes: list[cst.CSTNode], owners: dict[int, int] | None = None,
                   joined: JoinedNotebook | None = None) -> dict:
    """Positions (libcst CodeRange, module lines) of `nodes`.

    libcst's PositionProvider over a whole notebook costs ~40 ms per 500 lines; positions are only
    needed where there are findings, so each top-level statement that holds one is measured in a
    module of its own, shifted by the lines before it (`statement_lines`).
    """
    from libcst.metadata import MetadataWrapper, PositionProvider

    position = getattr(module, "position", None)  # a module built from `ast` knows its nodes' places
    if position is not None:
        known = {n: position(n) for n in nodes}
        if all(span is not None for span in known.values()):
            return known
    by_statement = statements_holding(module, nodes, owners)
    out: dict = {}
    body = module.body
    for index, line, _ in statement_lines(module, joined, sorted(by_statement)):
        alone = module.with_changes(body=[body[index]], header=[], footer=[])
        positions = MetadataWrapper(alone, unsafe_skip_copy=True).resolve(PositionProvider)
        for n in by_statement[index]:
            span = positions[n]
            out[n] = type(span)(
                type(span.start)(span.start.line + line - 1, span.start.column),
                type(span.end)(span.end.line + line - 1, span.end.column),
            )
    for n in nodes:  # anything not inside a statement (never expected): the slow, exact way
        if n not in out:
            out.update(MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider))
            break
    return out


def statements_holding(module: cst.Module, nodes: list, owners: dict[int, int] | None = None) -> dict[int, list]:
    """Top-level statement index -> the `nodes` inside it (`owners`: id(node) -> index, known
    already); a node inside no statement is left out."""
    from codemods.walk import walk

    owner = {id(n): owners[id(n)] for n in nodes if owners and id(n) in owners}
    wanted = {id(n) for n in nodes} - set(owner)
    for index, stmt in enumerate(module.body):  # the rest: arguments, calls in function bodies
        if not wanted:
            break
        for n in walk(stmt):
            if id(n) in wanted:
                owner[id(n)] = index
                wanted.discard(id(n))
    out: dict[int, list] = {}
    for n in nodes:
        if id(n) in owner:
            out.setdefault(owner[id(n)], []).append(n)
    return out


def statement_lines(module: cst.Module, joined: JoinedNotebook | None, indices: list[int]):
    """(index, module line where it starts, its number of lines) for the top-level statements at
    the sorted `indices`. With `joined` (what `module` was parsed from), the lines before a
    statement are counted from its cell's marker, whose line the join recorded, not by printing
    every statement before it."""
    from codemods.kept import statement_code

    markers = _marker_lines(joined)
    body = module.body
    line, at = 1 + len(module.header), 0  # statement `at` starts at module line `line`
    for index in indices:
        if markers:  # the nearest statement at or before this one that opens with a cell marker
            j = index
            while j > at:
                start = _marker_start(body[j], markers)
                if start is not None:
                    line, at = start, j
                    break
                j -= 1
        while at < index:
            line += statement_code(module, body[at]).count("\n")
            at += 1
        n_lines = statement_code(module, body[index]).count("\n")
        yield index, line, n_lines
        line, at = line + n_lines, index + 1


def _marker_lines(joined: JoinedNotebook | None) -> dict[int, int] | None:
    """Cell index -> the module line of its marker, when every marker-like text in the code is one
    of the join's own markers (a cell may hold a copy of one: then nothing is taken from them)."""
    from nbrefactor.notebook.join import MARKER_PREFIX

    if joined is None or joined.code.count(MARKER_PREFIX) != len(joined.cells):
        return None
    return {c.index: c.first_line - 1 for c in joined.cells}


def _marker_start(stmt: cst.CSTNode, markers: dict[int, int]) -> int | None:
    """The module line where `stmt` starts, when one of its leading lines is a cell marker."""
    from codemods.cells import NUMBERED_MARKER

    lines = getattr(stmt, "leading_lines", ())
    for k in range(len(lines) - 1, -1, -1):
        comment = lines[k].comment
        if comment is None or lines[k].whitespace.value:
            continue
        m = NUMBERED_MARKER.match(comment.value)
        if m and m.group(1) != "new" and int(m.group(1)) in markers:
            return markers[int(m.group(1))] - k
    return None


def _suppressed(lines: list[str], row: int, code: str) -> bool:
    """`# noqa` or `# noqa: NBR101, NBR2xx-codes` on the finding's line (`lines`: the cell's)."""
    if not 1 <= row <= len(lines):
        return False
    m = _NOQA.search(lines[row - 1])
    if m is None:
        return False
    codes = m.group("codes")
    return codes is None or code in {c.upper() for c in re.split(r"[\s,]+", codes) if c}
