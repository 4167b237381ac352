"""`fix` for one notebook: check, apply the codemods, write back by cell, repeat until nothing changes.

Each pass analyses the notebook afresh, applies the one-call fixes first (strategy, import order,
devices) and the structural ones (the Fabric training region) after, so every codemod works on
facts that describe the module it edits. The result is the new file text; nothing is written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nbrefactor.checker import Diagnostic, NotebookCheck, check_notebook
from nbrefactor.config import Selection
from nbrefactor.notebook.join import CellBoundaryError
from nbrefactor.notebook.model import Notebook, read_notebook

MAX_PASSES = 4


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


def _enabled(selection: Selection, code: str) -> bool:
    return selection.enabled(code)


def _one_pass(check: NotebookCheck, selection: Selection, unsafe_fixes: bool, devices: int | None):
    """(new module code or None, changes, refused) for one pass."""
    from codemods import local_fixes
    from codemods.cells import rebuild
    from codemods.data_into_hooks import data_into_hooks
    from codemods.wrap_training import wrap_training

    facts, module = check.facts, check.module
    changes: list[Change] = []
    replacements = {}
    cell_of = _cell_of_node(check)
    if _enabled(selection, "NBR401"):
        reps, found = local_fixes.notebook_strategies(facts)
        replacements.update(reps)
        changes += [Change(code, cell_of(node), msg) for code, node, msg in found]
    if devices is not None and _enabled(selection, "NBR402"):
        reps, found = local_fixes.explicit_devices(facts, devices)
        replacements.update(reps)
        changes += [Change(code, cell_of(node), msg) for code, node, msg in found]
    if unsafe_fixes and _enabled(selection, "NBR101"):
        plan, reps, found = local_fixes.cuda_before_fit(facts)
        if plan or reps:
            replacements.update(reps)
            changes += [Change(code, cell_of(node), msg) for code, node, msg in found]
            if plan:
                return rebuild(local_fixes.apply_replacements(module, replacements), plan).code, changes, []
    if replacements:
        return local_fixes.apply_replacements(module, replacements).code, changes, []
    if _enabled(selection, "NBR102"):
        plan, found = local_fixes.lightning_before_probe(facts)
        if plan:
            return rebuild(module, plan).code, [Change(c, cell + 1, m) for c, cell, m in found], []
    refused: list[str] = []
    if any(_enabled(selection, c) for c in ("NBR301", "NBR302", "NBR201", "NBR101")):
        outcome = wrap_training(facts, allow_unsafe=unsafe_fixes)
        changes = [Change(c, cell + 1, m) for c, cell, m in outcome.changes]
        if outcome.module is not module:
            return outcome.module.code, changes, outcome.refused
        refused += outcome.refused
    if unsafe_fixes and _enabled(selection, "NBR101"):
        plan, found = local_fixes.cuda_into_on_fit_start(facts)
        if plan:
            return rebuild(module, plan).code, [Change(c, cell + 1, m) for c, cell, m in found], refused
    if _enabled(selection, "NBR201"):
        hooks = data_into_hooks(facts, allow_unsafe=unsafe_fixes)
        refused += hooks.refused
        if hooks.plan or hooks.replacements:
            new = rebuild(local_fixes.apply_replacements(module, hooks.replacements), hooks.plan)
            return new.code, [Change(c, cell + 1, m) for c, cell, m in hooks.changes], refused
    return None, [], refused


def _cell_of_node(check: NotebookCheck):
    positions = None

    def cell_of(node) -> int:
        nonlocal positions
        if positions is None:
            from libcst.metadata import MetadataWrapper, PositionProvider

            positions = MetadataWrapper(check.module, unsafe_skip_copy=True).resolve(PositionProvider)
        cell, _ = check.joined.locate(positions[node].start.line)
        return cell + 1

    return cell_of


def _is_empty(source: str) -> bool:
    lines = [ln for ln in source.split("\n") if ln.strip()]
    return not lines or (len(lines) == 1 and lines[0].startswith("%%"))


def fix_notebook(
    notebook: Notebook,
    *,
    unsafe_fixes: bool = False,
    devices: int | None = None,
    selection: Selection = Selection(),
) -> FixResult:
    result = FixResult(notebook.path, notebook.raw, notebook.raw, before=notebook)
    current = notebook
    origin = [c.number for c in notebook.cells]  # current cell index -> number in the original
    seen_refusals: set[str] = set()
    check = None
    for _ in range(MAX_PASSES):
        check = check_notebook(current, selection)
        if check.facts is None:
            break
        new_code, changes, refused = _one_pass(check, selection, unsafe_fixes, devices)
        for r in refused:
            if r not in seen_refusals:
                seen_refusals.add(r)
                result.refused.append(r)
        if new_code is None or new_code == check.module.code:
            break  # `check` describes `current`: its findings are what remains
        try:
            sources = check.joined.split(new_code)
        except CellBoundaryError as err:  # a codemod bug must never become a broken notebook
            result.refused.append(f"not rewritten: internal error, cell boundaries were not kept ({err})")
            break
        deleted = {i for i, s in sources.items() if _is_empty(s) and not _is_empty(current.cells[i].source)}
        result.deleted_cells = sorted([*result.deleted_cells, *(origin[i] for i in deleted)])
        origin = [o for i, o in enumerate(origin) if i not in deleted]
        text = current.render(sources, deleted=deleted)
        result.changes.extend(changes)
        current = read_notebook(current.path, text.encode("utf-8"))
        check = None  # the notebook changed: the next pass (or the end) checks it afresh
    result.fixed = current.raw
    result.after = current
    result.remaining = (check if check is not None else check_notebook(current, selection)).diagnostics
    return result
