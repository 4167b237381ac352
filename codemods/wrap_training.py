"""Fabric: move the training region into `def train(fabric)` and launch it (NBR301, NBR302, and
NBR201/NBR101 for Fabric notebooks).

The layout it writes is the *Good* example of Lightning's "Fabric in Notebooks" page:

    def train(fabric):          # in the cell where the training region started
        <data, model, set-up, loop: the region's statements, in their order>
        if fabric.global_rank == 0:
            torch.save({"losses": losses, "model": model.module}, train_results_path)

    train_results_path = tempfile.mkdtemp(prefix="nbrefactor-") + "/train_results.pt"
    fabric.launch(train)        # where the region ended
    train_results = torch.load(train_results_path, map_location="cpu", weights_only=False)
    losses, model = train_results["losses"], train_results["model"]

What stays at top level: imports, functions, classes, constants and the `Fabric(...)` itself.
Names the notebook reads after training come back through a file written by rank 0, never through
`launch`'s return value (tensors fail there, and anything over ~64 KiB deadlocks the pipe); the
file lives in a fresh temporary folder, never beside the user's notebook, and is chosen before the
launch so the forked processes inherit its name. Cells
that explore the data before training keep working: the data they read is built by a top-level
factory (`make_dataset()`), called once for the notebook and once in each training process.
`print` in moved code becomes `fabric.print`, so the output appears once, as before.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from dataclasses import dataclass, field

import libcst as cst

from codemods import names as N
from codemods.cells import (
    BodyPlan,
    first_in_block,
    rebuild,
    split_leading_lines,
    without_cell_part,
)
from codemods.device import ProcessDevice
from codemods.facts import (
    NotebookFacts,
    Statement,
    fresh_name,
    module_alias,
    qualified_name,
    target_names,
)
from codemods.gate import bound_before_read
from codemods.rules.base import runs_before_a_launch
from codemods.walk import children

RESULTS_FILE = "train_results.pt"  # in a fresh temporary folder, chosen before the launch
_MAGIC = re.compile(r"^__nbrefactor_magic_\d+__$")


@dataclass
class Outcome:
    module: cst.Module
    changes: list[tuple[str, int, str]] = field(default_factory=list)  # (code, cell index, message)
    refused: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Launcher:
    """How the training function is written and launched: Fabric's `def train(fabric)` and
    `fabric.launch(train)`, or Accelerate's `def training_function()` (which creates its own
    `Accelerator`) and `notebook_launcher(training_function, num_processes=N)`."""

    owner: str  # the Fabric / Accelerator name: its `.print`, `.device`, rank 0
    function: str  # the new function's name
    params: tuple[str, ...]
    rank_zero: str  # the test that is true on rank 0 only
    launch: str  # the launch line, `{fn}` for the function's name
    code: str  # the rule of training at top level

    @classmethod
    def fabric(cls, name: str) -> Launcher:
        return cls(name, "train", (name,), f"{name}.global_rank == 0", f"{name}.launch({{fn}})", "NBR302")

    @classmethod
    def accelerate(cls, name: str, launcher: str, devices: int) -> Launcher:
        return cls(name, "training_function", (), f"{name}.is_main_process", f"{launcher}({{fn}}, num_processes={devices})", "NBR305")

    def unwrapped(self, name: str, kind: str | None) -> str:
        """What rank 0 saves for a name set up for training: the plain module / optimizer."""
        if self.params:  # Fabric
            return f"{name}.module" if kind == "module" else f"{name}.optimizer" if kind == "optimizer" else name
        return f"{self.owner}.unwrap_model({name})" if kind == "module" else name

    def signature(self, function: str | None = None) -> str:
        return f"{function or self.function}({', '.join(self.params)})"


# ---------------------------------------------------------------------------------------------
# Classifying top-level statements


def _is_constant(expr: cst.BaseExpression) -> bool:
    """Immutable literals and names combined by operators: safe to leave at top level. Lists,
    dicts and sets are not: training code appends to them."""
    if isinstance(expr, (cst.Integer, cst.Float, cst.Imaginary, cst.SimpleString, cst.ConcatenatedString, cst.Name, cst.Attribute, cst.Lambda)):
        return True
    if isinstance(expr, cst.Tuple):
        return all(_is_constant(e.value) for e in expr.elements)
    if isinstance(expr, cst.UnaryOperation):
        return _is_constant(expr.expression)
    if isinstance(expr, cst.BinaryOperation):
        return _is_constant(expr.left) and _is_constant(expr.right)
    return False


def is_definition(st: Statement, facts: NotebookFacts) -> bool:
    """Imports, functions, classes, constants, the Fabric object, magics: they stay at top level."""
    node = st.node
    if isinstance(node, (cst.FunctionDef, cst.ClassDef)):
        return True
    if not isinstance(node, cst.SimpleStatementLine):
        return False
    for small in node.body:
        if isinstance(small, (cst.Import, cst.ImportFrom, cst.Pass)):
            continue
        if isinstance(small, cst.Expr) and (
            isinstance(small.value, (cst.SimpleString, cst.ConcatenatedString))
            or (isinstance(small.value, cst.Name) and _MAGIC.match(small.value.value))
        ):
            continue
        if isinstance(small, (cst.Assign, cst.AnnAssign)) and small.value is not None:
            value = small.value
            if _is_constant(value):
                continue
            if isinstance(value, cst.Call):
                q = qualified_name(value.func, facts.env)
                if q == N.FABRIC:
                    continue
            targets = [t.target for t in small.targets] if isinstance(small, cst.Assign) else [small.target]
            if all(isinstance(t, cst.Subscript) and "environ" in cst.Module([]).code_for_node(t.value) for t in targets):
                continue
        return False
    return True




class _PrintToFabric:
    """`print(...)` -> `fabric.print(...)`: rank 0 prints, once, as the notebook did. Function
    bodies are left alone (they print where they are called)."""

    def __init__(self, fabric: str):
        self.fabric = fabric
        self.count = 0

    def rewrite(self, stmt: cst.CSTNode) -> cst.CSTNode:
        """`stmt` with its print calls rewritten. Only the nodes on the way to a print call are
        rebuilt (a libcst visit rebuilds every node, which made moving many statements slow);
        `stmt` itself comes back when it has none."""
        on_path: set[int] = set()  # ids of the print calls and of every node above one
        stack: list[tuple[cst.CSTNode, tuple[int, ...]]] = [(stmt, ())]
        while stack:
            node, above = stack.pop()
            if type(node) is cst.Call and isinstance(node.func, cst.Name) and node.func.value == "print":
                on_path.add(id(node))
                on_path.update(above)
            if not isinstance(node, cst.FunctionDef):
                inner = (*above, id(node))
                stack.extend((child, inner) for child in children(node))
        return self._rebuilt(stmt, on_path) if on_path else stmt

    def _rebuilt(self, node: cst.CSTNode, on_path: set[int]) -> cst.CSTNode:
        changes = {}
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if type(value) in (tuple, list):
                new = [self._rebuilt(x, on_path) if id(x) in on_path else x for x in value]
                if any(a is not b for a, b in zip(new, value)):
                    changes[f.name] = type(value)(new)
            elif id(value) in on_path and isinstance(value, cst.CSTNode):
                new_value = self._rebuilt(value, on_path)
                if new_value is not value:
                    changes[f.name] = new_value
        new = node.with_changes(**changes) if changes else node
        if type(node) is cst.Call and isinstance(node.func, cst.Name) and node.func.value == "print":
            self.count += 1
            new = new.with_changes(func=cst.Attribute(cst.Name(self.fabric), cst.Name("print")))
        return new


def _visited(stmt: cst.BaseStatement, transformer: cst.CSTTransformer, needed: bool) -> cst.BaseStatement:
    """`stmt.visit(transformer)`, or `stmt` itself where the visit would change nothing."""
    return stmt.visit(transformer) if needed else stmt


# ---------------------------------------------------------------------------------------------
# The codemod


def wrap_training(facts: NotebookFacts, *, allow_unsafe: bool) -> Outcome:
    module = facts.module
    out = Outcome(module)
    launches = [lp for lp in facts.launches if lp.kind == "fabric.launch" and lp.via is None]
    top_training = sorted({t.statement for t in facts.training})
    fabric_constructions = [
        st for st in facts.statements
        for t, v in _assign_pairs(st.node)
        if isinstance(v, cst.Call) and qualified_name(v.func, facts.env) == N.FABRIC
    ]
    no_function = [lp for lp in launches if not _launch_function(lp.node) or isinstance(N.call_arg(lp.node, "function", 0).value, cst.Call)]
    if not launches and not top_training:
        return out
    if len(launches) > 1 or len(fabric_constructions) > 1:
        where = ", ".join(f"cell {facts.statements[lp.statement].cell + 1}" for lp in launches) if len(launches) > 1 else \
            ", ".join(f"cell {st.cell + 1}" for st in fabric_constructions)
        what = "launches" if len(launches) > 1 else "Fabric objects"
        out.refused.append(f"not rewritten: the notebook has several {what} ({where}); wrap each training run into its own function by hand")
        return out
    fabric_name = _fabric_name(fabric_constructions, launches, facts)
    if fabric_name is None:
        return out
    launch = launches[0] if launches else None
    existing = None if launch is None or launch in no_function else _launch_function(launch.node)

    hazards = _hazard_statements(facts, launch)
    if existing is not None:
        late = sorted({facts.statements[i].cell + 1 for i in top_training if i > launch.statement})
        if late:  # never half-wrap: say what is left, and why
            out.refused.append(
                f"not rewritten: Fabric training in {_cells([c - 1 for c in late])} runs in the notebook process after "
                f"`{fabric_name}.launch({existing})`; move it into `{existing}` by hand (what it reads from `{existing}` "
                "exists only in the training processes)")
        return _move_into_existing(facts, out, launch, existing, hazards, fabric_name, allow_unsafe)
    return _wrap_region(facts, out, launch, top_training, hazards, Launcher.fabric(fabric_name), allow_unsafe)


def wrap_accelerate(facts: NotebookFacts, *, allow_unsafe: bool, devices: int | None) -> Outcome:
    """Accelerate training at top level (NBR305, with the `Accelerator` NBR103 and what it
    prepares) moves into `def training_function():`, launched by `notebook_launcher`."""
    out = Outcome(facts.module)
    top = sorted({t.statement for t in facts.accelerate_training if t.via is None})
    if not top or any(lp.kind == "notebook_launcher" for lp in facts.launches):
        return out
    states = sorted({s.statement for s in facts.accelerate_states if s.via is None})
    owners = [t.value for i in states for t, _ in _assign_pairs(facts.statements[i].node) if isinstance(t, cst.Name)]
    if len(states) != 1 or len(owners) != 1:
        out.refused.append("not rewritten (NBR305): the notebook needs exactly one top-level `accelerator = Accelerator(...)` to move into the training function")
        return out
    if devices is None:
        out.refused.append("not rewritten (NBR305): `notebook_launcher` needs `num_processes`: run fix with `--devices N`")
        return out
    launcher = _launcher_name(facts)
    owner = owners[0]
    readers = [st.index for st in facts.statements if st.index > states[0] and owner in st.uses]
    region = sorted({*top, *states, *readers})
    style = Launcher.accelerate(owner, launcher, devices)
    result = _wrap_region(facts, out, None, region, _hazard_statements(facts, None), style, allow_unsafe)
    if result.module is not facts.module and launcher not in facts.env:
        result.module = _with_launcher_import(result.module, launcher)
    return result


def _launcher_name(facts: NotebookFacts) -> str:
    for name, v in facts.env.items():
        if v.kind == "module" and v.qname == N.NOTEBOOK_LAUNCHER:
            return name
    return "notebook_launcher"


def _with_launcher_import(module: cst.Module, name: str) -> cst.Module:
    """`notebook_launcher` joins the notebook's `from accelerate import ...` line, or gets its own
    line after the first import."""
    body = list(module.body)
    for i, st in enumerate(body):
        for j, small in enumerate(getattr(st, "body", ()) if isinstance(st, cst.SimpleStatementLine) else ()):
            if isinstance(small, cst.ImportFrom) and not small.relative and N.dotted(small.module) == "accelerate" \
                    and not isinstance(small.names, cst.ImportStar):
                names = [*small.names[:-1], small.names[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))), cst.ImportAlias(cst.Name(name))]
                parts = list(st.body)
                parts[j] = small.with_changes(names=names)
                body[i] = st.with_changes(body=parts)
                return module.with_changes(body=body)
    at = next((i + 1 for i, st in enumerate(body) if isinstance(st, cst.SimpleStatementLine)
               and any(isinstance(x, (cst.Import, cst.ImportFrom)) for x in st.body)), 0)
    body.insert(at, cst.parse_statement(f"from accelerate import {name}\n"))
    return module.with_changes(body=body)


def _assign_pairs(node: cst.CSTNode):
    if isinstance(node, cst.SimpleStatementLine):
        for small in node.body:
            if isinstance(small, cst.Assign):
                for t in small.targets:
                    yield t.target, small.value


def _launch_function(call: cst.Call) -> str | None:
    arg = N.call_arg(call, "function", 0)
    return arg.value.value if arg is not None and isinstance(arg.value, cst.Name) else None


def _fabric_name(constructions: list[Statement], launches, facts: NotebookFacts) -> str | None:
    for st in constructions:
        for target, _ in _assign_pairs(st.node):
            if isinstance(target, cst.Name):
                return target.value
    for lp in launches:
        if isinstance(lp.node.func, cst.Attribute) and isinstance(lp.node.func.value, cst.Name):
            return lp.node.func.value.value
    return None


def _hazard_statements(facts: NotebookFacts, launch) -> dict[int, list[str]]:
    """Top-level statements that build data reaching training or touch CUDA before the launch,
    with the rule codes they answer."""
    out: dict[int, list[str]] = {}
    for d in facts.data:
        out.setdefault(d.statement, []).append("NBR201")
    for use in facts.cuda:
        if use.via is None and (launch is None or runs_before_a_launch(facts, use)):
            out.setdefault(use.statement, []).append("NBR101")
    return out


def _readers(facts: NotebookFacts) -> dict[str, list[int]]:
    """Name -> the indices of the top-level statements that read it."""
    out: dict[str, list[int]] = {}
    for st in facts.statements:
        for name in st.uses:
            out.setdefault(name, []).append(st.index)
    return out


def _movable_early(facts: NotebookFacts, early: list[int], inside: set[int], allow_unsafe: bool) -> list[int]:
    """The hazards before the region that move into `train` with it. Safe: those whose results
    nothing that stays at top level reads (decided together: one that stays keeps what it reads).

    A hazard stays when a statement outside `inside` and the moving hazards reads what it defines;
    a hazard that stays can only make those whose names it reads stay in turn. So the hazards are
    decided from a work list (whatever order they leave in, the ones left moving are the same),
    not by re-checking every hazard against every statement until nothing changes."""
    if allow_unsafe:
        return list(early)
    moving = set(early)
    if not moving:
        return []
    statements = facts.statements
    readers = _readers(facts)
    definers: dict[str, list[int]] = {}  # name -> the hazards that define it
    for i in moving:
        for name in statements[i].defines:
            definers.setdefault(name, []).append(i)

    def read_outside(i: int) -> bool:
        return any(j not in inside and j not in moving for name in statements[i].defines for j in readers.get(name, ()))

    todo = sorted(moving)
    while todo:
        i = todo.pop()
        if i not in moving or not read_outside(i):
            continue
        moving.discard(i)  # it stays: the hazards whose names it reads are looked at again
        todo.extend(h for name in statements[i].uses for h in definers.get(name, ()) if h in moving)
    return sorted(moving)


def _closure(facts: NotebookFacts, seeds: list[int], upto: int) -> list[int]:
    """Statements after the first seed (and up to `upto`) that read what moved statements define:
    they must move too, unless they only look (exploration, handled separately)."""
    moved = set(seeds)
    defined = set().union(*(facts.statements[i].defines for i in moved)) if moved else set()
    for st in facts.statements[min(seeds) if seeds else 0 : upto + 1]:
        if st.index in moved or is_definition(st, facts):
            continue
        if st.uses & defined:
            moved.add(st.index)
            defined |= st.defines
    return sorted(moved)


SETUP_METHODS = {"setup", "setup_module", "setup_optimizers", "setup_dataloaders"}


def outer_reads(st: Statement, module: cst.Module) -> set[str]:
    """The names a statement reads from outside: what it binds before reading (a `for` loop's
    target, `for x, y in loader: model(x)`) is not read from an earlier statement."""
    if not st.binds_any:  # binds nothing, so reads every name it uses from outside (no need to print and parse it)
        return set(st.uses)
    return st.uses - bound_before_read(module.code_for_node(st.node))


def _data_statements(facts: NotebookFacts) -> set[int]:
    """The top-level statements that build data reaching training."""
    return {d.statement for d in facts.data}


def _setup_rebinds(facts: NotebookFacts, moved: list[int]) -> set[int]:
    """Moved statements that only wrap what earlier statements built
    (`loader = fabric.setup_dataloaders(loader)`): the wrapped objects matter only in the training
    processes; cells outside `train` keep reading the plain ones (kept at top level, or made by
    the exploration factory)."""
    out: set[int] = set()
    first_definer: dict[str, int] | None = None  # name -> the first statement that defines it
    for i in moved:
        st = facts.statements[i]
        pairs = list(_assign_pairs(st.node))
        if len(pairs) != 1 or len(st.node.body) != 1:
            continue
        target, value = pairs[0]
        if not (isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute) and value.func.attr.value in SETUP_METHODS):
            continue
        names = target_names(target)
        if first_definer is None:
            first_definer = _first_definers(facts)
        if names and all(first_definer.get(n, i) < i for n in names):  # each defined before `i`
            out.add(i)
    return out


def _first_definers(facts: NotebookFacts) -> dict[str, int]:
    """Name -> the index of the first top-level statement that defines it."""
    first: dict[str, int] = {}
    for st in facts.statements:
        for name in st.defines:
            first.setdefault(name, st.index)
    return first


def _split_exploration(facts: NotebookFacts, moved: list[int], needed_by_training: set[str], training: set[int]) -> tuple[list[int], list[int], set[int]]:
    """(moved, stays, rebinds). What stays at top level: statements that look at the data, and
    those that only prepare what such statements read (`counts = Counter()` before a loop that
    counts labels), as long as they define nothing training reads, do no training, build no data
    that reaches it and touch no CUDA. Exploration that reads a loader Fabric wraps
    (`loader = fabric.setup_dataloaders(loader)`) keeps reading the plain one."""
    hazard_cuda = {u.statement for u in facts.cuda}
    data_statements = _data_statements(facts)
    rebinds = _setup_rebinds(facts, moved)
    keep_out: list[int] = []
    later_uses: set[str] = set(needed_by_training)
    explored: set[str] = set()  # what the statements kept out read
    # A name is defined by a moved statement before the one at position p in `moved` when the
    # first moved statement that defines it comes earlier (not a copy of the set per statement).
    first_definer: dict[str, int] = {}
    for position, i in enumerate(moved):
        for name in facts.statements[i].defines:
            first_definer.setdefault(name, position)
    for position in range(len(moved) - 1, -1, -1):
        i = moved[position]
        st = facts.statements[i]
        needed = i in training or i in hazard_cuda or i in data_statements or i in rebinds or bool(st.defines & later_uses)
        looks = any(first_definer.get(name, position) < position for name in st.uses) or bool(st.defines & explored)
        if needed or not looks:
            later_uses |= outer_reads(st, facts.module)
            continue
        keep_out.append(i)
        explored |= outer_reads(st, facts.module)
    keep_out.reverse()
    return [i for i in moved if i not in keep_out], keep_out, rebinds


def _factory_for(facts: NotebookFacts, exploration: list[int], moved: list[int], rebinds: set[int] = frozenset(), data_after: set[str] = frozenset()) -> list[int]:
    """The moved statements the exploration cells need at top level (their data, transitively),
    and those that build data the notebook reads after training; set-up calls that only wrap
    top-level objects are not needed there."""
    needed: set[str] = set().union(*(outer_reads(facts.statements[i], facts.module) for i in exploration)) if exploration else set()
    factory: list[int] = []
    for i in reversed(moved):
        st = facts.statements[i]
        if i in rebinds:
            continue
        if st.defines & needed and i < max(exploration, default=-1) or st.defines & data_after:
            factory.append(i)
            needed |= st.uses
    return sorted(factory)


def _wrap_region(facts, out, launch, top_training, hazards, style: Launcher, allow_unsafe) -> Outcome:
    end_candidates = list(top_training) + ([launch.statement] if launch else [])
    end = max(end_candidates)
    start_candidates = list(top_training) + ([launch.statement + 1] if launch else [])
    start = min(start_candidates)
    # Hazards before the region join it when they may move.
    early = [i for i in hazards if i < start]
    # What the statements before each one define, and those of the region before it: grown
    # statement by statement (recomputing them for each statement is quadratic in its length).
    earlier: set[str] = set().union(*(st.defines for st in facts.statements[:start]))
    region_defined: set[str] = set()
    region = []
    for st in facts.statements[start : end + 1]:
        if _in_region(st, facts, earlier, region_defined) and (launch is None or st.index != launch.statement):
            region.append(st.index)
        earlier |= st.defines
        region_defined |= st.defines
    _, stays, _ = _split_exploration(facts, _closure(facts, region, end), set(), set(top_training)) if region else ([], [], set())
    movable_early = _movable_early(facts, early, set(region) - set(stays), allow_unsafe)
    moved = _closure(facts, sorted(set(region) | set(movable_early)), end)
    moved = [i for i in moved if launch is None or i != launch.statement]
    if not moved:
        return out
    training = set(top_training)
    moved, exploration, rebinds = _split_exploration(facts, moved, set(), training)
    if not moved:
        return out
    anchor = moved[0]  # `def train` goes where the region starts, not where pulled-in code was
    moved, copies = _pull_in_read_before_assigned(facts, moved, launch.statement if launch else end)
    return _emit(facts, out, launch, moved, exploration, style, hazards, new_function=True, end=end, copies=copies, anchor=anchor, rebinds=rebinds)


def _in_region(st: Statement, facts: NotebookFacts, earlier: set[str], region_defined: set[str]) -> bool:
    """Inside the region range, everything moves but imports, functions, classes, magics, the
    Fabric object and constants that bind a new name from names the region does not define.
    `earlier`: what the statements before `st` define; `region_defined`: those of the region."""
    if not is_definition(st, facts):
        return True
    if isinstance(st.node, (cst.FunctionDef, cst.ClassDef)) or not st.defines:
        return False
    imports = any(isinstance(small, (cst.Import, cst.ImportFrom)) for small in getattr(st.node, "body", ()))
    return not imports and bool(st.defines & earlier or st.uses & region_defined)


def _pull_in_read_before_assigned(facts: NotebookFacts, moved: list[int], launch_at: int) -> tuple[list[int], list[int]]:
    """Names that become local to `train` but are read there before being assigned
    (`model, optimizer = fabric.setup(model, optimizer)`) would raise UnboundLocalError: their
    top-level definition comes along, moved when nothing else at top level reads it, copied
    otherwise. Returns (moved, copies)."""
    moved = sorted(moved)
    copies: list[int] = []
    copied: set[int] = set()
    statements = facts.statements
    data_statements = _data_statements(facts)
    definers_of: dict[str, list[int]] | None = None  # name -> the statements that define it, in order
    readers: dict[str, list[int]] | None = None
    for _ in range(len(statements)):
        local = set().union(*(statements[i].defines for i in moved)) if moved else set()
        assigned: set[str] = set()
        problem: set[str] = set()
        for i in sorted(set(moved) | copied):
            problem |= (statements[i].uses & local) - assigned
            assigned |= statements[i].defines
        if not problem:
            break
        if definers_of is None:
            definers_of, readers = {}, _readers(facts)
            for st in statements:
                for name in st.defines:
                    definers_of.setdefault(name, []).append(st.index)
        first = min(moved)
        definers = []
        for name in sorted(problem):
            # The last statement before `first` that defines it and is not copied already.
            indices = definers_of.get(name, [])
            k = bisect.bisect_left(indices, first) - 1
            while k >= 0 and indices[k] in copied:
                k -= 1
            d = statements[indices[k]] if k >= 0 else None
            if d is None or isinstance(d.node, (cst.FunctionDef, cst.ClassDef)):
                continue
            definers.append(d)
        if not definers:
            break
        pulling = {d.index for d in definers}
        moved_set = set(moved)
        for d in definers:
            # Data read after the launch stays at top level (the notebook's own plain copy);
            # anything else read after it comes back from rank 0.
            data = d.index in data_statements
            read = any(
                j not in moved_set and j not in pulling and j != launch_at and (j < launch_at or data)
                for name in d.defines for j in readers.get(name, ())
            )
            if is_definition(d, facts) or read:
                copies.append(d.index)
                copied.add(d.index)
            else:
                moved_set.add(d.index)
        moved = sorted(moved_set)
    return moved, sorted(set(copies))


def _move_into_existing(facts, out, launch, function, hazards, fabric_name, allow_unsafe) -> Outcome:
    summary = facts.functions.get(function)
    if summary is None:
        return out
    # A factory call the launched function makes too (`loader = make_loader()`, from an earlier
    # fix) is already how both sides get their data: wrapping it again would never end.
    called = {c.func.value for c in summary.calls if isinstance(c.func, cst.Name)}
    hazards_before = [i for i in sorted(hazards) if i < launch.statement and _called_factory(facts.statements[i]) not in called]
    seeds = _movable_early(facts, hazards_before, set(), allow_unsafe)
    if not seeds:
        return out
    moved = _closure(facts, seeds, launch.statement - 1)
    moved, exploration, rebinds = _split_exploration(facts, moved, set(summary.free_names), set())
    return _emit(facts, out, launch, moved, exploration, Launcher.fabric(fabric_name), hazards, new_function=False, function=function, rebinds=rebinds)


def _called_factory(st: Statement) -> str | None:
    """`x, y = f()`: the name of the notebook function a statement only calls and unpacks."""
    pairs = list(_assign_pairs(st.node))
    if len(pairs) == 1 and len(st.node.body) == 1:
        value = pairs[0][1]
        if isinstance(value, cst.Call) and not value.args and isinstance(value.func, cst.Name):
            return value.func.value
    return None


def _emit(facts, out, launch, moved, exploration, style: Launcher, hazards, *, new_function, end=None, function=None, copies=(), anchor=None, rebinds=frozenset()) -> Outcome:
    module = facts.module
    statements = facts.statements
    after_launch = {st.index for st in statements if st.index > (end if new_function else launch.statement)}
    moved_set = set(moved)
    defined_in_train = set().union(*(statements[i].defines for i in moved)) if moved else set()
    used_after = set()
    for i in sorted(after_launch):
        if i in moved_set:
            continue
        used_after |= outer_reads(statements[i], module)
    # Data the notebook reads after training is its own plain copy, made as exploration's is.
    data_after = used_after & {n for i in _data_statements(facts) & moved_set for n in statements[i].defines}
    factory = _factory_for(facts, exploration, moved, rebinds, data_after)
    factory_names = set().union(*(statements[i].defines for i in factory)) if factory else set()
    data_statements = _data_statements(facts)
    kept_data = {n for i in copies if i in data_statements for n in statements[i].defines}
    come_back = sorted((defined_in_train & used_after) - factory_names - kept_data - {style.owner})
    taken = set(facts.env) | defined_in_train | set().union(*(st.uses for st in statements))

    results_path = fresh_name("train_results_path", taken)
    torch_alias = module_alias(facts, "torch")
    extra_imports: list[cst.BaseStatement] = []
    if come_back and torch_alias is None:
        torch_alias = "torch"
        extra_imports.append(cst.parse_statement("import torch\n"))

    # The factory for exploration cells.
    factory_name = None
    factory_call_line = None
    if factory:
        produced = sorted(n for n in factory_names if n != "_")
        first = next(iter(produced), "data")
        factory_name = fresh_name(f"make_{first}", taken)
        taken.add(factory_name)
        targets = ", ".join(produced)
        body = [without_cell_part(statements[i].node) for i in factory]
        ret = cst.parse_statement(f"return {targets}\n")
        factory_def = cst.FunctionDef(
            name=cst.Name(factory_name),
            params=cst.Parameters(),
            body=cst.IndentedBlock(body=first_in_block([*body, ret])),
            leading_lines=[],
        )
        factory_call_line = f"{targets} = {factory_name}()\n"

    # The statements that will run in the training processes, in order: first copies of the
    # top-level definitions that train reads before it rebinds them.
    train_body: list[cst.BaseStatement] = []
    to_fabric_print = _PrintToFabric(style.owner)
    train_name = function
    on_device = ProcessDevice(f"{_fabric_parameter(facts, function) or style.owner}.device", facts)  # CUDA -> each process's own device
    factory_done = False
    for i in sorted(set(moved) | set(copies)):
        if i in copies:  # the original stays where it was, with its comments: they travel once
            copy = statements[i].node.with_changes(leading_lines=[])
            train_body.append(_visited(copy, on_device, not on_device.leaves_alone(copy)))
            continue
        if i in factory:
            if not factory_done:
                train_body.append(cst.parse_statement(factory_call_line))
                factory_done = True
            continue
        stmt = without_cell_part(statements[i].node)
        stmt = to_fabric_print.rewrite(stmt)
        train_body.append(_visited(stmt, on_device, not on_device.leaves_alone(stmt)))
    if factory and not factory_done:
        train_body.insert(0, cst.parse_statement(factory_call_line))

    # What the notebook reads after training comes back through a file written by rank 0.
    save_items = []
    setups = _setup_kinds(facts, moved, style)
    unsendable = [n for n in come_back if setups.get(n) == "other"]
    if unsendable:
        out.refused.append(
            f"not rewritten: the notebook reads {', '.join(f'`{n}`' for n in unsendable)} after training, which "
            f"`{style.owner}.prepare` wrapped for the training processes; move that code into the training function by hand")
        return out
    for name in come_back:
        save_items.append(f'"{name}": {style.unwrapped(name, setups.get(name))}')
    if come_back:
        save = cst.parse_statement(
            f"if {style.rank_zero}:\n"
            f"    {torch_alias}.save({{{', '.join(save_items)}}}, {results_path})\n"
        )
        train_body.append(save.with_changes(leading_lines=[
            cst.EmptyLine(comment=cst.Comment("# The notebook reads these after training: rank 0 hands them back through a file.")),
        ]))

    plan = BodyPlan()
    changes = []
    first_moved = anchor if anchor in moved else moved[0]
    if factory:
        factory_def = factory_def.with_changes(leading_lines=[cst.EmptyLine()])
        factory_call = cst.parse_statement(factory_call_line).with_changes(leading_lines=[cst.EmptyLine()])
    else:
        factory_call = None
    cells_moved = sorted({statements[i].cell for i in moved})
    if new_function:
        train_name = fresh_name(style.function, taken)
        fn = cst.FunctionDef(
            name=cst.Name(train_name),
            params=cst.Parameters(params=[cst.Param(cst.Name(p)) for p in style.params]),
            body=cst.IndentedBlock(body=first_in_block(train_body) or [cst.SimpleStatementLine([cst.Pass()])]),
        )
        launch_lines = [cst.parse_statement(style.launch.format(fn=train_name) + "\n")]
        if come_back:
            launch_lines = _results_round_trip(facts, launch_lines[0], results_path, torch_alias, come_back, taken)
        last_moved = moved[-1]
        launch_at = max(last_moved, launch.statement if launch else last_moved)
        for i in moved:
            plan.remove(i)
        if launch is not None:
            plan.remove(launch.statement)
        head = [*extra_imports]
        if factory:
            head += [factory_def, factory_call]
        if head or not split_leading_lines(statements[first_moved].node)[0]:
            fn = fn.with_changes(leading_lines=[cst.EmptyLine()])
        if launch_at == first_moved:
            launch_lines[0] = launch_lines[0].with_changes(leading_lines=[cst.EmptyLine()])
            plan.replace(first_moved, [*head, fn, *launch_lines])
        elif _code_stays_after(statements, first_moved, moved_set | set(factory)):
            # `def train` must not sit in the middle of a cell whose other code stays: it goes
            # with the launch, into the cell that ends the training region.
            if head:
                plan.replace(first_moved, head)
            launch_lines[0] = launch_lines[0].with_changes(leading_lines=[cst.EmptyLine()])
            plan.replace(launch_at, [fn.with_changes(leading_lines=[]), *launch_lines])
        else:
            plan.replace(first_moved, [*head, fn])
            plan.replace(launch_at, launch_lines)
        codes = sorted({style.code} | ({"NBR301"} if launch is not None else set()) | {c for i in moved for c in hazards.get(i, [])})
        changes.append((codes[0] if "NBR301" not in codes else "NBR301", statements[first_moved].cell,
                        f"moved {len(moved)} statement{'s' * (len(moved) != 1)} from {_cells(cells_moved)} into {style.signature(train_name)} and launched it"))
    else:
        fn_index = next(st.index for st in statements if isinstance(st.node, cst.FunctionDef) and st.node.name.value == function)
        fn_node = statements[fn_index].node
        new_fn = fn_node.with_changes(body=fn_node.body.with_changes(body=first_in_block([*train_body, *fn_node.body.body])))
        for i in moved:
            plan.remove(i)
        if factory:
            plan.replace(factory[0], [*extra_imports, factory_def, factory_call])
        plan.replace(fn_index, [new_fn])
        if come_back:
            launch_stmt = statements[launch.statement].node
            plan.replace(launch.statement, _results_round_trip(facts, launch_stmt, results_path, torch_alias, come_back, taken))
    for i in moved:
        for code in hazards.get(i, []):
            what = "built the data" if code == "NBR201" else "deferred the CUDA work"
            changes.append((code, statements[i].cell, f"{what} of cell {statements[i].cell + 1} inside {style.signature(function)}"))
    if factory:
        changes.append(("NBR201", statements[factory[0]].cell, f"exploration cells read the data through {factory_name}(), which each training process also calls"))
    if come_back:
        changes.append((style.code, statements[moved[-1]].cell, f"rank 0 saves {', '.join(come_back)} to {RESULTS_FILE} in a temporary folder; the notebook loads them after training"))
    if on_device.rewrites:
        changes.append(("NBR101", statements[first_moved].cell,
                        f"{style.signature(train_name)} places its tensors on each process's own device: {on_device.summary()}"))
    if to_fabric_print.count:
        changes.append((style.code, statements[first_moved].cell, f"{to_fabric_print.count} print call{'s' * (to_fabric_print.count != 1)} became {style.owner}.print (rank 0 prints once)"))
    out.module = rebuild(module, plan)
    out.changes.extend(changes)
    return out


def _code_stays_after(statements: list[Statement], index: int, leaving: set[int]) -> bool:
    """Does code of the cell of `index` that stays at top level come after it?"""
    cell = statements[index].cell
    return any(st.cell == cell and st.index > index and st.index not in leaving for st in statements)


def _results_round_trip(facts, launch_stmt, path_name, torch_alias, come_back, taken) -> list[cst.BaseStatement]:
    """The launch between choosing the results file and loading what rank 0 saved there."""
    tempfile = module_alias(facts, "tempfile")
    out: list[cst.BaseStatement] = []
    if tempfile is None:
        tempfile = "tempfile"
        out.append(cst.parse_statement("import tempfile\n"))
    out.append(cst.parse_statement(f'{path_name} = {tempfile}.mkdtemp(prefix="nbrefactor-") + "/{RESULTS_FILE}"\n'))
    out.append(launch_stmt)
    results = fresh_name("train_results", taken)
    out.append(cst.parse_statement(f'{results} = {torch_alias}.load({path_name}, map_location="cpu", weights_only=False)\n'))
    rhs = ", ".join(f'{results}["{n}"]' for n in come_back)
    out.append(cst.parse_statement(f"{', '.join(come_back)} = {rhs}\n"))
    return out


def _fabric_parameter(facts: NotebookFacts, function: str | None) -> str | None:
    """The name an existing launched function gives its Fabric (`def train(f):` -> "f")."""
    summary = facts.functions.get(function) if function else None
    return summary.params[0] if summary is not None and summary.params else None


def _cells(cells: list[int]) -> str:
    numbers = [c + 1 for c in cells]
    if len(numbers) == 1:
        return f"cell {numbers[0]}"
    return f"cells {numbers[0]}-{numbers[-1]}"


def _setup_kinds(facts: NotebookFacts, moved: list[int], style: Launcher) -> dict[str, str]:
    """Names the moved code set up for training, and what they hold ("module", "optimizer", or
    "other" for what Accelerate prepared that is neither a module nor known)."""
    return _fabric_setup_kinds(facts, moved) if style.params else _prepared_kinds(facts, moved, style.owner)


def _prepared_kinds(facts: NotebookFacts, moved: list[int], owner: str) -> dict[str, str]:
    """`model, optimizer, loader = accelerator.prepare(model, optimizer, loader)`: a name whose
    `.parameters()` the moved code reads is a module; the others are "other"."""
    code = "\n".join(facts.module.code_for_node(facts.statements[i].node) for i in moved)
    kinds: dict[str, str] = {}
    for i in moved:
        for target, value in _assign_pairs(facts.statements[i].node):
            if not (isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute) and value.func.attr.value == "prepare"
                    and N.dotted(value.func.value) == owner):
                continue
            for name in sorted(target_names(target)):
                kinds[name] = "module" if f"{name}.parameters(" in code else "other"
    return kinds


def _fabric_setup_kinds(facts: NotebookFacts, moved: list[int]) -> dict[str, str]:
    """Names bound from `fabric.setup*` in the moved code: "module" or "optimizer"."""
    kinds: dict[str, str] = {}
    for i in moved:
        for target, value in _assign_pairs(facts.statements[i].node):
            if not (isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute)):
                continue
            method = value.func.attr.value
            names = [e.value.value for e in target.elements if isinstance(e.value, cst.Name)] if isinstance(target, (cst.Tuple, cst.List)) else \
                [target.value] if isinstance(target, cst.Name) else []
            if method == "setup" and names:
                kinds[names[0]] = "module"
                for n in names[1:]:
                    kinds[n] = "optimizer"
            elif method == "setup_module":
                kinds.update({n: "module" for n in names})
            elif method == "setup_optimizers":
                kinds.update({n: "optimizer" for n in names})
    return kinds
