"""The semantic gate: after a fix, is every name still bound where the kernel reads it?

A kernel runs the cells in order. A name read at top level must have been bound by an earlier
statement (or the same one); a notebook function reads its free names when it is *called*, so they
must be bound at the top-level statement that calls it (or hands it to `fabric.launch`, which calls
it in the training processes). A class's `__init__` runs where the class is used; its other
methods (Lightning's hooks) run later, during a launch, so their free names must be bound by the
end of the notebook.

The gate compares two versions of one notebook module: a name that the fixed version reads
unbound, and that the original never read unbound anywhere, means the fix broke the notebook, and
that fix is refused. Comparing, rather than judging the fixed notebook alone, keeps the gate quiet
about what the original already did (names from `%run`, star imports, typos) and about what the
analysis cannot see.

CPython's own `ast` and `symtable` do the scoping, so the gate agrees with the interpreter on
what is local, free or global; nothing here runs the notebook's code.
"""

from __future__ import annotations

import ast
import builtins
import functools
import heapq
import re
import symtable
from dataclasses import dataclass

# Names a Jupyter kernel binds before any cell runs.
KERNEL_NAMES = frozenset({
    "get_ipython", "display", "In", "Out", "exit", "quit", "_", "__", "___", "_i", "_ii", "_iii",
    "_ih", "_oh", "_dh", "__name__", "__doc__", "__builtins__", "__spec__", "__loader__", "__package__",
})
_PLACEHOLDER = re.compile(r"^__nbrefactor_magic_\d+__$")
_HISTORY = re.compile(r"^_i?\d+$")  # _5, _i5: IPython's output and input history


def _always_bound(name: str) -> bool:
    return name in KERNEL_NAMES or hasattr(builtins, name) or bool(_PLACEHOLDER.match(name) or _HISTORY.match(name))


@dataclass(frozen=True)
class Unbound:
    """`name` is read at `line` (of the module) before anything binds it."""

    name: str
    line: int
    reader: str | None = None  # the notebook function whose body reads it, if not top level

    def describe(self) -> str:
        where = f"`{self.reader}` reads `{self.name}`" if self.reader else f"`{self.name}` is read"
        return f"{where} before the notebook binds it"


class _Definition:
    """A top-level function or class: the global names its body reads, and when. Worked out from
    its scope's symbol table when the walk first needs it (a definition that is never called or
    used is never looked into)."""

    __slots__ = ("_first_reads", "_reads", "name", "node", "offset", "table")

    def __init__(self, name: str, node: ast.AST, table: symtable.SymbolTable, offset: int = 0) -> None:
        self.name, self.node, self.table = name, node, table
        self.offset = offset  # module line = the node's line + offset (its cell parsed alone)
        self._reads: tuple | None = None
        self._first_reads: dict[str, int] | None = None  # name -> line, one walk

    def _resolved(self) -> tuple[set[str], set[str], set[str], dict[str, int]]:
        if self._reads is None:
            reads_when_called: set[str] = set()  # functions; a class's __init__
            reads_later: set[str] = set()  # a class's other methods
            binds_when_called: set[str] = set()  # `global x; x = ...`
            read_before_assigned: dict[str, int] = {}  # local -> line (UnboundLocalError)
            if isinstance(self.node, ast.ClassDef):
                for method in self.table.get_children():
                    if method.get_type() != "function":
                        continue
                    target = reads_when_called if method.get_name() in ("__init__", "__new__", "__post_init__") else reads_later
                    target |= _global_reads(method)
                    binds_when_called |= _global_binds(method)
            else:
                reads_when_called = _global_reads(self.table)
                binds_when_called = _global_binds(self.table)
                read_before_assigned = {name: line + self.offset for name, line in _read_before_assigned(self.node, self.table).items()}
            self._reads = (reads_when_called, reads_later, binds_when_called, read_before_assigned)
        return self._reads

    @property
    def reads_when_called(self) -> set[str]:
        return self._resolved()[0]

    @property
    def reads_later(self) -> set[str]:
        return self._resolved()[1]

    @property
    def binds_when_called(self) -> set[str]:
        return self._resolved()[2]

    @property
    def read_before_assigned(self) -> dict[str, int]:
        return self._resolved()[3]

    def first_read(self, name: str) -> int:
        """The line where the body first reads `name` (the definition's line if it never does):
        every name's first read found in one walk of the definition, not one walk per name."""
        if self._first_reads is None:
            self._first_reads = {}
            for n in ast.walk(self.node):
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
                    line = self._first_reads.get(n.id)
                    if line is None or n.lineno < line:
                        self._first_reads[n.id] = n.lineno
        return self._first_reads.get(name, getattr(self.node, "lineno", 1)) + self.offset


@functools.lru_cache(maxsize=8)  # one pass's "after" is the next pass's "before"
def unbound_reads(source: str) -> tuple[Unbound, ...] | None:
    """Every read of a name that is not bound when the kernel runs it; None when the source does
    not parse (or is too deep for the parser)."""
    try:
        cells = _parsed_cells(source)
        if cells is None:
            parts = [(0, ast.parse(source))]
            tables = _top_level_tables(symtable.symtable(source, "<notebook>", "exec"))
        else:
            parts = [(line, tree) for line, tree, _ in cells]
            tables = {(name, lineno + line): table for line, _, piece in cells for (name, lineno), table in piece.items()}
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    try:
        return tuple(_Walk(tables).run(parts))
    except RecursionError:
        return None


_CELL_MARKER = re.compile(r"^# %% nbrefactor-cell ", re.MULTILINE)  # the join's markers (nbrefactor.notebook.join)
# The cells of the module last read, by text: (tree, top-level symbol tables); never changed by the gate.
_last_cells: dict[str, tuple[ast.Module, dict]] = {}


def _parsed_cells(source: str) -> list[tuple[int, ast.Module, dict]] | None:
    """The module's `ast` and scopes as those of its cells (the text from one cell marker to the
    next), each parsed alone: (the number of module lines before it, its tree, its top-level symbol
    tables by (name, line in the cell)). A function's or class's scope is the same whether its cell
    is compiled alone or in the module (the names it does not bind are global either way). The
    cells of the module read last are kept by their text (those of one module, not more): a fix
    changes a few cells, and the gate's "after" parses only those.
    None, for one parse of the whole text, where that is not sure to give the same statements:
    a piece that does not parse alone (a statement across a marker), `__future__` imports (they
    change the parser for what follows), bare carriage returns (other line counts), one piece."""
    if "__future__" in source or "\r" in source:
        return None
    starts = [m.start() for m in _CELL_MARKER.finditer(source)]
    if not starts or (len(starts) == 1 and starts[0] == 0):
        return None
    if starts[0] != 0:
        starts.insert(0, 0)
    global _last_cells
    known, cells = _last_cells, {}
    out = []
    line = 0
    for start, end in zip(starts, [*starts[1:], len(source)]):
        piece = source[start:end]
        parsed = known.get(piece) or cells.get(piece)
        if parsed is None:
            try:
                parsed = (ast.parse(piece), _top_level_tables(symtable.symtable(piece, "<cell>", "exec")))
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                return None
        cells[piece] = parsed
        out.append((line, *parsed))
        line += piece.count("\n")
    _last_cells = cells
    return out


def new_unbound(before: str, after: str) -> list[Unbound]:
    """The reads `after` leaves unbound that `before` did not leave unbound anywhere."""
    old = unbound_reads(before)
    if old is None:
        return []  # the gate cannot judge a module it cannot parse; the fixer's own checks apply
    new = unbound_reads(after)
    if new is None:
        return [Unbound("<syntax>", 1)]
    known = {u.name for u in old}
    seen: set[str] = set()
    out = []
    for u in new:
        if u.name not in known and u.name not in seen:
            seen.add(u.name)
            out.append(u)
    return out


# ---------------------------------------------------------------------------------------------
# Scopes


def _top_level_tables(table: symtable.SymbolTable) -> dict[tuple[str, int], symtable.SymbolTable]:
    return {(child.get_name(), child.get_lineno()): child for child in table.get_children()}


def _global_reads(table: symtable.SymbolTable) -> set[str]:
    """Global names read anywhere in a function's body, nested scopes included."""
    out = {s.get_name() for s in table.get_symbols() if s.is_referenced() and s.is_global()}
    for child in table.get_children():
        out |= _global_reads(child)
    return out


def _global_binds(table: symtable.SymbolTable) -> set[str]:
    out = {s.get_name() for s in table.get_symbols() if s.is_declared_global() and s.is_assigned()}
    for child in table.get_children():
        out |= _global_binds(child)
    return out


def _definition(node: ast.AST, tables, offset: int = 0) -> _Definition | None:
    table = tables.get((node.name, node.lineno + offset))
    if table is None:
        return None
    return _Definition(node.name, node, table, offset)


def _read_before_assigned(node: ast.AST, table: symtable.SymbolTable) -> dict[str, int]:
    """Locals of a function read before anything assigns them, in the order Python evaluates the
    body (`model, opt = fabric.setup(model, opt)` with no earlier `model` in the function):
    UnboundLocalError when it is called. Name -> line of the read."""
    local = {s.get_name() for s in table.get_symbols() if s.is_local() and s.is_assigned() and not s.is_parameter()}
    read, _ = _evaluation_order(node.body, local)
    return read


def bound_before_read(source: str) -> set[str]:
    """Names a piece of top-level code binds before it first reads them, in evaluation order
    (`for x, y in loader: model(x)` binds `x` and `y` first): such a statement does not read an
    earlier `x`. Empty when the source does not parse."""
    try:
        body = ast.parse(source).body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    read, stored = _evaluation_order(body, None)
    return stored - set(read)


def _evaluation_order(body: list[ast.stmt], tracked: set[str] | None) -> tuple[dict[str, int], set[str]]:
    """Walk statements in the order Python evaluates them (an assignment's value before its
    targets, a loop's iterable before its target and body; nested function and lambda bodies do not
    run): (names read before any binding, with the line of that read; names bound)."""
    read: dict[str, int] = {}
    stored: set[str] = set()
    stack = list(reversed(body))
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stored.add(n.name)
            continue
        if isinstance(n, ast.Lambda):
            continue
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            stored.update(alias.asname or alias.name.split(".")[0] for alias in n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            stored.add(n.name)
        elif isinstance(n, ast.Name) and (tracked is None or n.id in tracked):
            if not isinstance(n.ctx, ast.Load):
                stored.add(n.id)
            elif n.id not in stored:
                read.setdefault(n.id, n.lineno)
        if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.NamedExpr)):
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            stack.extend(reversed([*([n.value] if n.value is not None else []), *targets]))
            continue
        if isinstance(n, (ast.For, ast.AsyncFor)):
            stack.extend(reversed([n.iter, n.target, *n.body, *n.orelse]))
            continue
        if isinstance(n, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            order = [part for gen in n.generators for part in (gen.iter, gen.target, *gen.ifs)]
            order += [n.key, n.value] if isinstance(n, ast.DictComp) else [n.elt]  # the element last
            stack.extend(reversed(order))
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(n))))
    return read, stored


# ---------------------------------------------------------------------------------------------
# What one top-level statement reads and binds when it runs


class _Now(ast.NodeVisitor):
    """Names read and bound when a top-level statement runs: function and lambda bodies do not
    run now (their decorators and defaults do); class bodies do."""

    def __init__(self) -> None:
        self.reads: list[ast.Name] = []
        self.binds: set[str] = set()
        self.star = False

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.reads.append(node)
        else:
            self.binds.add(node.id)

    def _function(self, node) -> None:
        self.binds.add(node.name)
        for d in node.decorator_list:
            self.visit(d)
        self._defaults(node.args)

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def _defaults(self, args: ast.arguments) -> None:
        for d in [*args.defaults, *args.kw_defaults]:
            if d is not None:
                self.visit(d)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._defaults(node.args)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.binds.add(node.name)
        for n in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(n)
        inner = _Now()
        for st in node.body:
            inner.visit(st)
        self.reads.extend(r for r in inner.reads if r.id not in inner.binds)
        self.star |= inner.star

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.binds.add(alias.asname or alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name == "*":
                self.star = True
            else:
                self.binds.add(alias.asname or alias.name)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.binds.add(node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node) -> None:
        if node.name:
            self.binds.add(node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node) -> None:
        if node.name:
            self.binds.add(node.name)

    def visit_MatchMapping(self, node) -> None:
        if node.rest:
            self.binds.add(node.rest)
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        self.binds.update(node.names)


# ---------------------------------------------------------------------------------------------
# The walk in cell order


class _Walk:
    def __init__(self, tables) -> None:
        self.tables = tables
        self.bound: dict[str, int] = {}  # name -> the order in which it was first bound (a set that remembers when)
        self.star = False
        self.definitions: dict[str, _Definition] = {}
        self.used_classes: dict[str, _Definition] = {}
        self.found: list[Unbound] = []
        self.new_classes: list[str] = []  # used classes met since `run` last looked
        self.offset = 0  # module line = a node's line + offset, in the piece being walked

    def run(self, parts: list[tuple[int, ast.Module]]) -> list[Unbound]:
        for offset, tree in parts:
            self.offset = offset
            for statement in tree.body:
                self.statement(statement)
        # Hooks run during a launch: by the end, at the latest. The classes in name order, those
        # that checking one of them reaches included (a heap: not a sort per class).
        done: set[str] = set()
        pending = list(self.used_classes)
        heapq.heapify(pending)
        self.new_classes = []
        while pending:
            name = heapq.heappop(pending)
            if name in done:
                continue
            done.add(name)
            d = self.used_classes[name]
            for read in sorted(d.reads_later):
                self.require(read, d, set())
            for new in self.new_classes:
                heapq.heappush(pending, new)
            self.new_classes.clear()
        return self.found

    def statement(self, statement: ast.stmt) -> None:
        now = _Now()
        now.visit(statement)
        # What is bound when the statement runs: what was bound before it, as it was then, and
        # what it binds itself (a view, not a copy per statement: that was quadratic).
        available = _BoundBefore(self.bound, len(self.bound), now.binds)
        for name in now.reads:
            if name.id not in available:
                self.report(Unbound(name.id, name.lineno + self.offset))
        used = {n.id for n in now.reads if n.id in self.definitions}
        for name in sorted(used):
            self.call(self.definitions[name], available, set())
        self.star |= now.star
        self._bind(now.binds)
        for name in now.binds:
            self.definitions.pop(name, None)
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            d = _definition(statement, self.tables, self.offset)
            if d is not None:
                self.definitions[d.name] = d

    def _bind(self, names) -> None:
        for name in names:
            self.bound.setdefault(name, len(self.bound))

    def call(self, d: _Definition, available, seen: set[str]) -> None:
        """`d` is called (or instantiated) now: its free names must be bound, and the notebook
        functions it reaches are called too."""
        if d.name in seen:
            return
        seen.add(d.name)
        if isinstance(d.node, ast.ClassDef):
            if d.name not in self.used_classes:
                self.new_classes.append(d.name)
            self.used_classes[d.name] = d
        for name, line in sorted(d.read_before_assigned.items()):
            self.report(Unbound(name, line, d.name))
        for name in sorted(d.reads_when_called):
            if name not in available:
                self.require(name, d, seen)
            elif name in self.definitions and name != d.name:
                self.call(self.definitions[name], available, seen)
        self._bind(d.binds_when_called)

    def require(self, name: str, d: _Definition, seen: set[str]) -> None:
        if name in self.bound:
            if name in self.definitions and name not in seen:
                self.call(self.definitions[name], self.bound, seen | {d.name})
            return
        if self.star or _always_bound(name):
            return  # never reported: the line of its first read is not looked for (a walk of `d`)
        self.report(Unbound(name, d.first_read(name), d.name))

    def report(self, u: Unbound) -> None:
        if self.star or _always_bound(u.name):
            return
        self.found.append(u)


class _BoundBefore:
    """The names bound when a statement starts (the first `limit` names of `bound`, in the order
    they were bound) and those the statement binds itself: what a call made during the statement
    binds later does not count, as with a copy taken at its start."""

    __slots__ = ("bound", "limit", "own")

    def __init__(self, bound: dict[str, int], limit: int, own: set[str]) -> None:
        self.bound, self.limit, self.own = bound, limit, own

    def __contains__(self, name: object) -> bool:
        order = self.bound.get(name)
        return (order is not None and order < self.limit) or name in self.own
