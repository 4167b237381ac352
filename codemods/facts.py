"""What a notebook does, in the order its cells run: computed once, read by every rule and codemod.

The notebook process runs the top-level statements in cell order. A fork-based launch point
(`fabric.launch`, `trainer.fit/validate/test/predict`, Accelerate's `notebook_launcher`, or a call
of a notebook function that reaches one) forks the training processes from that state. So the pass
walks the top-level statements in order, tracks what each name holds (a Fabric, a Trainer, a CUDA
device, a Dataset, a DataLoader ...), and records, per statement, what runs *now*: calls in
decorators, defaults and class bodies run at definition time, function bodies only when called.

Calls of notebook functions and classes are followed through a summary of their bodies (what they
launch, which CUDA they touch, what they return), so `model = build()` with `.cuda()` inside
`build` is found at the call that runs it.
"""

from __future__ import annotations

import bisect
from collections import ChainMap, deque
from dataclasses import dataclass, field

import libcst as cst

from codemods import names as N
from codemods.fast_tree import source_of
from codemods.kept import kept
from codemods.walk import KindOf, children, contains, walk
from codemods.cells import NUMBERED_MARKER, cell_after

# ---------------------------------------------------------------------------------------------
# What a name can hold


@dataclass(frozen=True)
class Value:
    """What a name holds, as far as the notebook's text tells."""

    kind: str  # module | fabric | trainer | cuda_device | dataset | dataloader | datamodule |
    #            lightning_module | function | class | launched_fabric | accelerator | hf_trainer
    qname: str | None = None  # modules and classes: the canonical qualified name
    node: cst.CSTNode | None = None  # functions and classes: their definition; data: the building call


DATA_KINDS = ("dataset", "dataloader")
PARAM = Value("param")  # a function parameter: unknown unless the call site says more

# torch.cuda functions that create a CUDA context (or, for get_arch_list, poison fork).
CUDA_INITIALISING = {
    "torch.cuda.set_device": "selects a CUDA device",
    "torch.cuda.current_device": "queries the current CUDA device",
    "torch.cuda.get_device_name": "queries the CUDA device",
    "torch.cuda.get_device_properties": "queries the CUDA device",
    "torch.cuda.get_device_capability": "queries the CUDA device",
    "torch.cuda.is_bf16_supported": "queries the CUDA device",
    "torch.cuda.synchronize": "synchronises the CUDA device",
    "torch.cuda.mem_get_info": "queries CUDA memory",
    "torch.cuda.memory_snapshot": "queries CUDA memory",
    "torch.cuda.reset_peak_memory_stats": "resets CUDA memory statistics",
    "torch.cuda.get_arch_list": "asks the CUDA runtime for its architectures",
    "torch.cuda.init": "initialises CUDA",
    "torch.cuda.ipc_collect": "collects CUDA IPC memory",
    "torch.cuda.get_rng_state": "reads the CUDA RNG state",
    "torch.cuda.get_rng_state_all": "reads the CUDA RNG state",
    "torch.cuda.set_rng_state": "sets the CUDA RNG state",
    "torch.cuda.set_rng_state_all": "sets the CUDA RNG state",
    "torch.cuda.Stream": "creates a CUDA stream",
    "torch.cuda.Event": "creates a CUDA event",
    "lightning.fabric.accelerators.find_usable_cuda_devices": "allocates a tensor on every GPU",
    "lightning.fabric.accelerators.cuda.find_usable_cuda_devices": "allocates a tensor on every GPU",
    "lightning.pytorch.accelerators.find_usable_cuda_devices": "allocates a tensor on every GPU",
    "lightning.fabric.utilities.seed.isolate_rng": "reads the CUDA RNG state",
    "lightning.pytorch.utilities.seed.isolate_rng": "reads the CUDA RNG state",
}
CHECKPOINT_LOADERS = {"torch.load", "torch.jit.load"}
FABRIC_TRAINING_METHODS = {
    "setup", "setup_module", "setup_optimizers", "setup_dataloaders", "backward", "clip_gradients",
    "all_reduce", "all_gather", "barrier", "broadcast", "to_device",
}
TRAINER_LAUNCH_METHODS = ("fit", "validate", "test", "predict")
LAUNCH_DATA_KEYWORDS = ("train_dataloaders", "val_dataloaders", "dataloaders")

# ---------------------------------------------------------------------------------------------
# Records


@dataclass
class LaunchPoint:
    node: cst.Call  # the call that forks (at top level: the statement's own call)
    kind: str  # "fabric.launch" | "trainer.fit" | ... | "notebook_launcher"
    statement: int  # index of the top-level statement that runs it
    via: str | None = None  # name of the notebook function called at top level that reaches it
    function: str | None = None  # the launched notebook function (Fabric / notebook_launcher)
    handed: frozenset[str] = frozenset()  # global names handed to training
    inner: cst.Call | None = None  # the launch call inside `via`
    direct: frozenset[str] = frozenset()  # names in the launch call's own arguments


@dataclass
class CudaUse:
    node: cst.CSTNode  # the call (at top level) that initialises CUDA
    reason: str
    statement: int
    via: str | None = None  # notebook function or class whose body does it
    inner: cst.Call | None = None  # the call that does it (inside `via`, or `node` itself)


@dataclass
class DataBuild:
    node: cst.Call
    kind: str  # "dataset" | "dataloader"
    statement: int
    names: tuple[str, ...]
    label: str  # what is built, for messages: "DataLoader", "MNIST", ...
    handed_to: str | None = None  # the launch kind (or "fabric training") it reaches
    through: str | None = None  # the data name it reaches training through, if not directly


@dataclass
class TrainingCall:
    node: cst.Call
    what: str
    statement: int
    via: str | None = None


@dataclass
class AccelerateState:
    """`Accelerator(...)`, `AcceleratorState(...)` or `PartialState(...)` run in the notebook process
    (shaped like `CudaUse`, so `runs_before_a_launch` orders it against the launch points)."""

    node: cst.Call  # the top-level call that runs it
    what: str  # "Accelerator" | "AcceleratorState" | "PartialState"
    statement: int
    via: str | None = None  # notebook function or class whose body does it
    inner: cst.Call | None = None  # the constructor call itself (inside `via`, or `node`)


@dataclass
class LibraryImport:
    node: cst.Import | cst.ImportFrom
    statement: int


@dataclass
class ConstructorCall:
    """`Trainer(...)` / `Fabric(...)` / `DDPStrategy(...)` anywhere in the notebook's code."""

    node: cst.Call
    kind: str  # "trainer" | "fabric" | "ddp_strategy"


@dataclass
class Statement:
    node: cst.CSTNode
    index: int
    cell: int  # index of the cell among all cells
    defines: set[str] = field(default_factory=set)
    uses: set[str] = field(default_factory=set)
    calls: list[cst.Call] = field(default_factory=list)  # calls that run when the statement runs
    binds_any: bool = True  # False: nothing in it binds a name (no assignment, import, def, `for` ...)


@dataclass
class FunctionSummary:
    """What calling a notebook function (or instantiating a notebook class) does."""

    name: str
    node: cst.CSTNode
    params: tuple[str, ...] = ()
    free_names: set[str] = field(default_factory=set)
    calls: list[cst.Call] = field(default_factory=list)
    env: dict[str, Value] = field(default_factory=dict)
    returns: Value | None = None


@dataclass
class NotebookFacts:
    module: cst.Module
    statements: list[Statement]
    env: dict[str, Value]  # the global names after the last cell
    launches: list[LaunchPoint]
    cuda: list[CudaUse]
    cuda_probes: list[CudaUse]  # torch.cuda.is_available() calls, with the statement they run in
    lightning_import: int | None  # first statement that imports Lightning (sets the NVML check)
    data: list[DataBuild]
    training: list[TrainingCall]  # Fabric training run in the notebook process
    constructors: list[ConstructorCall]
    start_methods: list[tuple[cst.Call, str]]
    datamodule_setups: list[tuple[cst.Call, str, int]]  # (call, datamodule name, statement)
    functions: dict[str, FunctionSummary]
    uses_fabric: bool = False
    cpu_only_calls: set[int] = field(default_factory=set)  # ids of calls in a "no CUDA" branch
    lightning_module_classes: set[str] = field(default_factory=set)  # notebook classes that are LightningModules
    # Accelerate state built in the notebook process, in the order it runs (NBR103).
    accelerate_states: list[AccelerateState] = field(default_factory=list)
    # `accelerator.prepare/backward/gather/...` run in the notebook process (NBR305); not in
    # `training`, which is Fabric's (and drives its fix).
    accelerate_training: list[TrainingCall] = field(default_factory=list)
    bitsandbytes_imports: list[LibraryImport] = field(default_factory=list)  # top-level ones (NBR104)
    _code: str | None = field(default=None, repr=False, compare=False)  # `module.code`, once printed
    _last_launch: tuple[int, int | None] | None = field(default=None, repr=False, compare=False)
    _definers: tuple[int, dict[str, list[int]]] | None = field(default=None, repr=False, compare=False)
    # What a rule and its fix both derive from these facts (the stale reads after a launch), once.
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def code(self) -> str:
        """The module's text: printed once (printing a large module costs as much as parsing it)."""
        if self._code is None:
            self._code = self.module.code
        return self._code

    @property
    def last_launch(self) -> int | None:
        # Asked once per CUDA use: remembered while the launches stay as they are.
        if self._last_launch is None or self._last_launch[0] != len(self.launches):
            self._last_launch = (len(self.launches), max((lp.statement for lp in self.launches), default=None))
        return self._last_launch[1]

    def statement_cell(self, index: int) -> int:
        return self.statements[index].cell

    def defined_between(self, name: str, after: int, upto: int) -> bool:
        """Does a top-level statement with an index in (after, upto] bind `name`? (An index of the
        statements that bind each name, built once: not a scan of the range per question.)"""
        if self._definers is None or self._definers[0] != len(self.statements):
            index: dict[str, list[int]] = {}
            for st in self.statements:
                for n in st.defines:
                    index.setdefault(n, []).append(st.index)
            self._definers = (len(self.statements), index)
        indices = self._definers[1].get(name)
        if not indices:
            return False
        k = bisect.bisect_right(indices, after)
        return k < len(indices) and indices[k] <= upto


def qualified_name(expr: cst.BaseExpression, env) -> str | None:
    """`L.Trainer` -> "lightning.pytorch.Trainer" under the imports in `env`; None for anything
    that is not a dotted name rooted in an import."""
    t = type(expr)  # concrete libcst classes, never subclassed: cheaper than an ABC's isinstance
    if t is cst.Name:
        v = env.get(expr.value)
        return v.qname if v is not None and v.kind in ("module", "class") else None
    if t is cst.Attribute:
        head = qualified_name(expr.value, env)
        return None if head is None else N.canonical(f"{head}.{expr.attr.value}")
    return None


def module_alias(facts: "NotebookFacts", qname: str) -> str | None:
    """The notebook's name for an imported module (`np` for numpy), if it imports it."""
    for name, v in facts.env.items():
        if v.kind == "module" and v.qname == qname:
            return name
    return None


def fresh_name(name: str, taken: set[str]) -> str:
    """`name`, or `name_2`, `name_3` ... : the first one not in `taken`."""
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    return candidate


def lightning_import(facts: "NotebookFacts") -> str | None:
    """The module of the notebook's first top-level Lightning import (`lightning`,
    `pytorch_lightning.callbacks`, ...): codemods that add an import spell it the notebook's way."""
    for st in facts.statements:
        if not isinstance(st.node, cst.SimpleStatementLine):
            continue
        for small in st.node.body:
            modules = []
            if isinstance(small, cst.Import):
                modules = [N.dotted(alias.name) or "" for alias in small.names]
            elif isinstance(small, cst.ImportFrom) and small.module is not None and not small.relative:
                modules = [N.dotted(small.module) or ""]
            for module in modules:
                if module.split(".")[0] in N.LIGHTNING_PACKAGES:
                    return module
    return None


# ---------------------------------------------------------------------------------------------
# Walking one statement


@dataclass
class Scan:
    """What runs when a statement (or function body) runs: its calls in source order, the names
    it reads and the names it binds. Function bodies inside it do not run; their decorators and
    defaults do, and class bodies do."""

    calls: list[cst.Call] = field(default_factory=list)
    loads: set[str] = field(default_factory=set)
    binds: set[str] = field(default_factory=set)
    ifs: list[cst.If] = field(default_factory=list)
    # Binds names that `binds` does not list: a comprehension's target, `:=`, `del`, `except ...
    # as e`, any import (a relative one binds names `binds` leaves out).
    binds_unlisted: bool = False


# Nodes that bind a name (in Python's terms: a name stored or deleted) beyond what `Scan.binds` lists.
_UNLISTED_BINDINGS = tuple(
    t for t in (getattr(cst, name, None) for name in ("CompFor", "NamedExpr", "Del", "ExceptHandler", "ExceptStarHandler", "TypeAlias"))
    if t is not None
)


# What `scan` does with a node, by its type (libcst's classes are ABCs, and an isinstance per node
# and question was a fifth of the analysis).
_SCAN_KIND = KindOf((
    (cst.Name, "Name"), (cst.Call, "Call"), (cst.If, "If"), (_UNLISTED_BINDINGS, "unlisted"),
    (cst.FunctionDef, "def"), (cst.Param, "param"), (cst.Lambda, "lambda"), (cst.Attribute, "attribute"),
    (cst.Arg, "arg"), ((cst.Import, cst.ImportFrom), "import"), (cst.ClassDef, "class"),
    ((cst.AssignTarget, cst.AnnAssign, cst.AugAssign, cst.For), "target"), (cst.WithItem, "with"),
), "")


def scan(node: cst.CSTNode) -> Scan:
    """What runs when `node` runs (see `Scan`)."""
    return kept("scans", node, _scan)


def _scan(node: cst.CSTNode) -> Scan:
    out = Scan()
    stack: list[cst.CSTNode] = [node]
    kinds = _SCAN_KIND
    while stack:
        n = stack.pop()
        kind = kinds[type(n)]
        if kind == "Name":
            out.loads.add(n.value)
            continue
        if kind == "Call":
            out.calls.append(n)
        elif kind == "If":
            out.ifs.append(n)
        elif kind == "unlisted":
            out.binds_unlisted = True
        elif kind == "def":
            out.binds.add(n.name.value)
            stack.extend(reversed([n.params, *n.decorators]))  # the body does not run now
            continue
        elif kind == "param":
            stack.extend(x for x in (n.annotation, n.default) if x is not None)
            continue
        elif kind == "lambda":
            stack.append(n.params)
            continue
        elif kind == "attribute":
            stack.append(n.value)  # `.attr` is not a name read
            continue
        elif kind == "arg":
            stack.append(n.value)  # `keyword=` is not a name read
            continue
        elif kind == "import":
            out.binds.update(N.import_bindings(n))
            out.binds_unlisted = True
            continue
        elif kind == "class":
            out.binds.add(n.name.value)
        elif kind == "target":
            out.binds.update(target_names(n.target))
        elif kind == "with" and n.asname is not None:
            out.binds.update(target_names(n.asname.name))
        stack.extend(reversed(children(n)))
    return out


def target_names(target: cst.CSTNode) -> set[str]:
    """The names an assignment target binds (`a, (b, *c) = ...` -> a, b, c)."""
    t = type(target)  # concrete libcst classes, never subclassed
    if t is cst.Name:
        return {target.value}
    if t is cst.Tuple or t is cst.List:
        out: set[str] = set()
        for el in target.elements:
            out |= target_names(el.value)
        return out
    if t is cst.StarredElement:
        return target_names(target.value)
    return set()


def _assignments(node: cst.CSTNode):
    """(targets, value) for each assignment a top-level statement makes (not in function bodies)."""
    if isinstance(node, (cst.If, cst.With, cst.Try, cst.For, cst.While)):
        yield from ((t, v) for t, v in _walk_assignments(node) if not isinstance(t, (cst.Import, cst.ImportFrom)))
        return
    if isinstance(node, cst.SimpleStatementLine):
        for small in node.body:
            if isinstance(small, cst.Assign):
                for t in small.targets:
                    yield t.target, small.value
            elif isinstance(small, cst.AnnAssign) and small.value is not None:
                yield small.target, small.value


def _walk_assignments(body: cst.CSTNode):
    """Every assignment and import inside a block, in text order (not inside nested functions or
    classes): (target, value) pairs, and (import, import) for imports."""
    return _walk_body(body)[0]


def _walk_body(body: cst.CSTNode):
    """`_walk_assignments(body)`, and the `return` statements with a value among them, in one walk
    (a `return` is never directly in a class body or a lambda)."""
    return kept("bodies", body, _walk_body_now)


def _walk_body_now(body: cst.CSTNode):
    found: list[tuple[cst.CSTNode, cst.BaseExpression]] = []
    returns: list[cst.Return] = []
    for n in walk(body, enter=lambda n: n is body or not _IS_DEFINITION[type(n)]):
        t = type(n)
        if t is cst.Assign:
            found.extend((t.target, n.value) for t in n.targets)
        elif t is cst.AnnAssign and n.value is not None:
            found.append((n.target, n.value))
        elif t is cst.Import or t is cst.ImportFrom:
            found.append((n, n))
        elif t is cst.Return and n.value is not None:
            returns.append(n)
    return found, returns


_IS_DEFINITION = KindOf((((cst.FunctionDef, cst.ClassDef), True),), False)


# ---------------------------------------------------------------------------------------------
# The pass


class _Analysis:
    def __init__(self, module: cst.Module):
        self.module = module
        self.env: dict[str, Value] = {}
        self.functions: dict[str, FunctionSummary] = {}
        self._summaries: dict[int, FunctionSummary] = {}
        self.facts = NotebookFacts(
            module, [], self.env, [], [], [], None, [], [], [], [], [], self.functions
        )
        self._in_progress: set[int] = set()
        self.if_nodes: list[cst.If] = []  # every `if` the scans met, for the no-CUDA branches

    # -- names -----------------------------------------------------------------------------

    def qname(self, expr: cst.BaseExpression, env: dict[str, Value]) -> str | None:
        return qualified_name(expr, env)

    def value_of(self, expr: cst.BaseExpression, env: dict[str, Value]) -> Value | None:
        t = type(expr)
        if t is cst.Name:
            return env.get(expr.value)
        if t is cst.Call:
            return self.call_result(expr, env)
        if t is cst.IfExp:
            a, b = self.value_of(expr.body, env), self.value_of(expr.orelse, env)
            if self.is_cuda_device(expr.body, env) or self.is_cuda_device(expr.orelse, env):
                return Value("cuda_device")
            return a or b
        if t is cst.Attribute:
            if self.accelerator_device(expr, env):
                return Value("cuda_device")
            q = self.qname(expr, env)
            return Value("module", q) if q else None
        return None

    def accelerator_device(self, expr: cst.Attribute, env: dict[str, Value]) -> bool:
        """`accelerator.device` of an `Accelerator()` not made with `cpu=True`: in the notebook
        process (no distributed environment) it is the first GPU."""
        if expr.attr.value != "device":
            return False
        owner = self.value_of(expr.value, env)
        if owner is None or owner.kind != "accelerator":
            return False
        cpu = N.call_arg(owner.node, "cpu") if isinstance(owner.node, cst.Call) else None
        return not (cpu is not None and isinstance(cpu.value, cst.Name) and cpu.value.value == "True")

    def class_kind(self, qname: str | None, env: dict[str, Value]) -> str | None:
        if qname is None:
            return None
        if qname == N.FABRIC:
            return "fabric"
        if qname == N.TRAINER:
            return "trainer"
        if qname in N.DATALOADERS:
            return "dataloader"
        if qname in N.DATASET_FUNCTIONS or qname.startswith(N.DATASET_MODULE_PREFIXES):
            return "dataset"
        if qname in N.DDP_STRATEGIES:
            return "ddp_strategy"
        if qname == N.ACCELERATOR:
            return "accelerator"
        if qname in N.HF_TRAINERS:
            return "hf_trainer"
        return None

    def user_class_kind(self, node: cst.ClassDef, seen: frozenset = frozenset()) -> str | None:
        for base in node.bases:
            q = self.qname(base.value, self.env)
            if q == N.LIGHTNING_MODULE:
                return "lightning_module"
            if q == N.DATA_MODULE:
                return "datamodule"
            if q in N.DATASET_BASES:
                return "dataset"
            if q in N.HF_TRAINERS:
                return "hf_trainer"
            if isinstance(base.value, cst.Name):
                v = self.env.get(base.value.value)
                if v is not None and v.kind == "class" and v.node is not None and id(v.node) not in seen:
                    k = self.user_class_kind(v.node, seen | {id(node)})
                    if k:
                        return k
        return None

    def call_result(self, call: cst.Call, env: dict[str, Value]) -> Value | None:
        func = call.func
        if isinstance(func, cst.Attribute) and func.attr.value in ("cuda", "to", "cpu", "train", "eval", "float", "double", "half", "requires_grad_"):
            receiver = self.value_of(func.value, env)  # these return the module itself
            if receiver is not None and receiver.kind == "lightning_module":
                return receiver
        q = self.qname(func, env)
        kind = self.class_kind(q, env)
        if kind:
            return Value(kind, q, call)
        if q == "torch.device":
            return Value("cuda_device") if self.is_cuda_device(call, env) else None
        if isinstance(func, cst.Name):
            v = env.get(func.value)
            if v is not None and v.kind == "class" and isinstance(v.node, cst.ClassDef):
                k = self.user_class_kind(v.node)
                return Value(k, None, call) if k else None
            if v is not None and v.kind == "function":
                summary = self.summary(v.node)
                if summary.returns is not None and summary.returns.kind in DATA_KINDS:
                    return Value(summary.returns.kind, None, call)
        return None

    def is_cuda_device(self, expr: cst.BaseExpression | None, env: dict[str, Value]) -> bool:
        """Does this expression name a CUDA device ('cuda', 'cuda:0', torch.device('cuda'), a
        variable holding one, or a conditional that may give one)?"""
        if expr is None:
            return False
        s = N.string_value(expr)
        if s is not None:
            return s.startswith("cuda")
        if isinstance(expr, cst.Name):
            v = env.get(expr.value)
            return v is not None and v.kind == "cuda_device"
        if isinstance(expr, cst.IfExp):
            return self.is_cuda_device(expr.body, env) or self.is_cuda_device(expr.orelse, env)
        if isinstance(expr, cst.Call):
            q = self.qname(expr.func, env)
            if q == "torch.device":
                first = N.call_arg(expr, "type", 0)
                return first is not None and self.is_cuda_device(first.value, env)
        if isinstance(expr, cst.Attribute):  # torch.device("cuda").type and the like: unknown
            return self.accelerator_device(expr, env)
        return False

    # -- CUDA --------------------------------------------------------------------------------

    def cuda_reason(self, call: cst.Call, env: dict[str, Value]) -> str | None:
        """Why this call initialises CUDA in the process that runs it, or None."""
        func = call.func
        q = self.qname(func, env)
        if q in CUDA_INITIALISING:
            return f"`{N.dotted(func)}()` {CUDA_INITIALISING[q]}"
        if isinstance(func, cst.Attribute):
            attr = func.attr.value
            if attr == "cuda" and q is None:
                return "`.cuda()` moves memory to the GPU"
            if attr == "to" and q is None:
                dev = N.call_arg(call, "device", 0)
                if dev is not None and self.is_cuda_device(dev.value, env):
                    return f"`.to({_short(dev.value)})` moves memory to the GPU"
            if attr == "load_from_checkpoint" and N.call_arg(call, "map_location") is None:
                return "`load_from_checkpoint()` without `map_location` restores GPU tensors"
        if q in CHECKPOINT_LOADERS or (isinstance(func, cst.Attribute) and func.attr.value == "load_from_checkpoint"):
            where = N.call_arg(call, "map_location", 1 if q in CHECKPOINT_LOADERS else None)
            if where is None and q in CHECKPOINT_LOADERS:
                return f"`{N.dotted(func)}()` without `map_location` restores GPU tensors"
            if where is not None and self.is_cuda_device(where.value, env):
                return f"`{N.dotted(func) or 'load'}(map_location={_short(where.value)})` loads onto the GPU"
        if isinstance(func, cst.Name) and func.value == "iter" and "iter" not in env and call.args:
            loader = self.value_of(call.args[0].value, env)
            if loader is not None and loader.kind == "dataloader" and _pins_memory(loader.node):
                return "iterating a DataLoader with `pin_memory=True` pins memory through CUDA"
        if q is not None and q.startswith("torch."):
            dev = N.call_arg(call, "device")
            if dev is not None and self.is_cuda_device(dev.value, env):
                return f"`{N.dotted(func)}(..., device={_short(dev.value)})` allocates on the GPU"
            if q in ("torch.autocast", "torch.amp.autocast", "torch.cuda.amp.autocast"):
                dtype = N.call_arg(call, "dtype")
                dtype_name = N.dotted(dtype.value) if dtype is not None else None
                device = N.call_arg(call, "device_type", 0)
                on_cuda = q == "torch.cuda.amp.autocast" or (device is not None and self.is_cuda_device(device.value, env))
                if on_cuda and dtype_name is not None and dtype_name.endswith("bfloat16"):
                    return "bfloat16 autocast on CUDA checks the GPU for bf16 support"
        return self.hugging_face_cuda_reason(call, env)

    def hugging_face_cuda_reason(self, call: cst.Call, env: dict[str, Value]) -> str | None:
        """`from_pretrained(..., device_map=...)` places the weights on the GPUs (any map but
        "cpu"/None); a Hugging Face `Trainer(...).train()` trains on the GPU of the calling process."""
        func = call.func
        if not isinstance(func, cst.Attribute):
            return None
        if func.attr.value == "from_pretrained":
            where = N.call_arg(call, "device_map")
            if where is not None and not _cpu_map(where.value):
                return f"`from_pretrained(device_map={_short(where.value)})` loads the weights onto the GPU"
        if func.attr.value == "train":
            owner = self.value_of(func.value, env)
            if owner is not None and owner.kind == "hf_trainer":
                return "a Hugging Face `Trainer`'s `.train()` trains on the GPU"
        return None

    # -- summaries of notebook functions and classes -----------------------------------------

    def summary(self, node: cst.CSTNode) -> FunctionSummary:
        key = id(node)
        if key in self._summaries:
            return self._summaries[key]
        if isinstance(node, cst.ClassDef):
            init = next(
                (s for s in node.body.body if isinstance(s, cst.FunctionDef) and s.name.value == "__init__"),
                None,
            )
            summary = self.summary(init) if init is not None else FunctionSummary(node.name.value, node)
            summary = FunctionSummary(node.name.value, node, summary.params, summary.free_names, summary.calls, summary.env)
            self._summaries[key] = summary
            return summary
        assert isinstance(node, cst.FunctionDef)
        params = tuple(p.name.value for p in (*node.params.params, *node.params.posonly_params, *node.params.kwonly_params))
        if isinstance(node.params.star_arg, cst.Param):
            params += (node.params.star_arg.name.value,)
        if node.params.star_kwarg is not None:
            params += (node.params.star_kwarg.name.value,)
        body_scan = scan(node.body)
        self.if_nodes.extend(body_scan.ifs)
        # Globals are looked up live (a function runs after the cells that follow its definition).
        local = ChainMap({p: PARAM for p in params}, self.env)
        summary = FunctionSummary(node.name.value, node, params, set(), body_scan.calls, local)
        self._summaries[key] = summary
        assignments, returned = _walk_body(node.body)
        for target, value in assignments:
            if isinstance(target, (cst.Import, cst.ImportFrom)):
                for name, q in N.import_bindings(target).items():
                    local[name] = Value("module", N.canonical(q))
                continue
            self.bind(target, value, local)
        summary.free_names = body_scan.loads - body_scan.binds - set(params)
        returns = [self.value_of(n.value, local) for n in returned]
        summary.returns = next((r for r in returns if r is not None), None)
        return summary

    def reached(self, call: cst.Call, env: dict[str, Value]) -> FunctionSummary | None:
        """The summary of the notebook function or class a call runs, if it is one."""
        if isinstance(call.func, cst.Name):
            v = env.get(call.func.value)
            if v is not None and v.kind in ("function", "class") and v.node is not None:
                return self.summary(v.node)
        return None

    def effects(self, call: cst.Call, env: dict[str, Value], seen: frozenset[int] = frozenset()):
        """Everything a call runs, followed into notebook functions: yields (inner call, env, via)."""
        yield call, env, None
        summary = self.reached(call, env)
        if summary is None or id(summary.node) in seen:
            return
        seen = seen | {id(summary.node)}
        env_inside = summary.env
        cuda_params = self.cuda_arguments(call, summary, env)
        if cuda_params:
            env_inside = summary.env.new_child({p: Value("cuda_device") for p in cuda_params})
        for inner in summary.calls:
            for c, e, via in self.effects(inner, env_inside, seen):
                yield c, e, via or summary.name

    def cuda_arguments(self, call: cst.Call, summary: FunctionSummary, env) -> list[str]:
        """Parameters of a notebook function that this call binds to a CUDA device."""
        if not isinstance(summary.node, cst.FunctionDef):
            return []
        out = []
        positional = [a for a in call.args if a.keyword is None and not a.star]
        names = [p.name.value for p in summary.node.params.params]
        for i, a in enumerate(positional):
            if i < len(names) and self.is_cuda_device(a.value, env):
                out.append(names[i])
        for a in call.args:
            if a.keyword is not None and a.keyword.value in summary.params and self.is_cuda_device(a.value, env):
                out.append(a.keyword.value)
        return out

    # -- launch points -------------------------------------------------------------------------

    def launch_kind(self, call: cst.Call, env: dict[str, Value]) -> str | None:
        func = call.func
        if isinstance(func, cst.Attribute):
            owner = self.value_of(func.value, env)
            owner_kind = owner.kind if owner is not None else None
            attr = func.attr.value
            if attr == "launch" and owner_kind == "fabric":
                return "fabric.launch"
            if attr in TRAINER_LAUNCH_METHODS and owner_kind == "trainer":
                return f"trainer.{attr}"
        if self.qname(func, env) == N.NOTEBOOK_LAUNCHER:
            return "notebook_launcher"
        return None

    def bind(self, target: cst.CSTNode, value: cst.BaseExpression, env: dict[str, Value]) -> None:
        names = target_names(target)
        v = self.value_of(value, env)
        if isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute) and value.func.attr.value == "setup":
            # `model, optimizer = fabric.setup(model, optimizer)`: no longer plain values.
            v = None
        for name in names:
            if v is not None and (v.kind in ("module",) or len(names) == 1 or v.kind in DATA_KINDS):
                env[name] = v
            else:
                env.pop(name, None)

    def run(self) -> NotebookFacts:
        facts = self.facts
        cell = -1
        body = list(self.module.body)
        # The first code cell's marker sits in the module header.
        # nbrefactor's joined modules number their cells; a jupytext percent module (the libcst
        # commands) has plain `# %%` lines, counted instead.
        opening = [*self.module.header, *(getattr(body[0], "leading_lines", ()) if body else ())]
        plain = not any(line.comment is not None and NUMBERED_MARKER.match(line.comment.value) for line in opening)
        for line in self.module.header:
            if line.comment is not None:
                cell = cell_after(line.comment.value, cell, plain)
        for index, node in enumerate(body):
            for line in getattr(node, "leading_lines", ()):
                if line.comment is not None:
                    cell = cell_after(line.comment.value, cell, plain)
            found = scan(node)
            self.if_nodes.extend(found.ifs)
            st = Statement(node, index, cell, found.binds, found.loads, found.calls, bool(found.binds) or found.binds_unlisted)
            facts.statements.append(st)
            self.statement(st)
        facts.cpu_only_calls = _cpu_only_calls(self.if_nodes)
        facts.lightning_module_classes = {
            name for name, v in self.env.items()
            if v.kind == "class" and isinstance(v.node, cst.ClassDef) and self.user_class_kind(v.node) == "lightning_module"
        }
        facts.uses_fabric = any(v.kind == "fabric" for v in self.env.values()) or any(
            c.kind == "fabric" for c in facts.constructors
        )
        self.handoffs()
        return facts

    def statement(self, st: Statement) -> None:
        if N.is_main_guard(st.node):
            # A kernel runs the body of `if __name__ == "__main__":` as top-level code, in order.
            for inner in N.guarded_statements(st.node):
                self.run_node(st, inner, scan(inner).calls)
            return
        self.run_node(st, st.node, st.calls)

    def run_node(self, st: Statement, node: cst.CSTNode, calls: list[cst.Call]) -> None:
        """What the notebook process does when it runs `node` (statement `st`, or a statement
        inside its `__main__` guard): imports, then the calls in order, then the bindings."""
        facts, env = self.facts, self.env
        # Imports first, so names resolve in the statement that binds them (also imports inside a
        # top-level `try:` or `if`, the usual "install if missing" cell).
        if isinstance(node, cst.SimpleStatementLine):
            imports = [small for small in node.body if isinstance(small, (cst.Import, cst.ImportFrom))]
        elif isinstance(node, (cst.If, cst.Try, cst.With, cst.For, cst.While)):
            imports = [t for t, _ in _walk_assignments(node) if isinstance(t, (cst.Import, cst.ImportFrom))]
        else:
            imports = []
        for imp in imports:
            for name, q in N.import_bindings(imp).items():
                env[name] = Value("module", N.canonical(q))
                if facts.lightning_import is None and N.is_lightning(q):
                    facts.lightning_import = st.index
                if q.split(".")[0] == N.BITSANDBYTES:
                    facts.bitsandbytes_imports.append(LibraryImport(imp, st.index))
        if isinstance(node, cst.SimpleStatementLine):
            for small in node.body:
                if isinstance(small, cst.Assign) and facts.lightning_import is None:
                    for t in small.targets:
                        if isinstance(t.target, cst.Subscript) and "PYTORCH_NVML_BASED_CUDA_CHECK" in self.module.code_for_node(t.target):
                            facts.lightning_import = st.index
        for call in calls:
            self.one_call(call, st, env)
        if isinstance(node, cst.FunctionDef):
            env[node.name.value] = Value("function", None, node)
            self.functions[node.name.value] = self.summary(node)
            self.constructors_in(self.functions[node.name.value])
        elif isinstance(node, cst.ClassDef):
            env[node.name.value] = Value("class", None, node)
            for s in node.body.body:
                if isinstance(s, cst.FunctionDef):
                    self.constructors_in(self.summary(s))
        for target, value in _assignments(node):
            self.bind(target, value, env)
            v = env.get(next(iter(target_names(target)), ""), None)
            if isinstance(value, cst.Call) and v is not None and v.kind in DATA_KINDS and v.node is value:
                label = N.dotted(value.func) or "data"
                bound = tuple(sorted(n for n in target_names(target) if n != "_"))
                facts.data.append(DataBuild(value, v.kind, st.index, bound, label.split(".")[-1]))

    def one_call(self, call: cst.Call, st: Statement, env: dict[str, Value]) -> None:
        facts = self.facts
        kind = self.launch_kind(call, env)
        if kind is not None:
            facts.launches.append(self.launch_point(call, kind, st.index, env))
        self.constructor(call, env)
        q = self.qname(call.func, env)
        if q in ("torch.multiprocessing.set_start_method", "multiprocessing.set_start_method"):
            method = N.call_arg(call, "method", 0)
            value = N.string_value(method.value) if method is not None else None
            if value in ("spawn", "forkserver"):
                facts.start_methods.append((call, value))
        if isinstance(call.func, cst.Attribute) and call.func.attr.value in ("setup", "prepare_data"):
            owner = call.func.value
            v = self.value_of(owner, env)
            if v is not None and v.kind == "datamodule" and isinstance(owner, cst.Name):
                facts.datamodule_setups.append((call, owner.value, st.index))
        for inner, inner_env, via in self.effects(call, env):
            if via is not None:
                k = self.launch_kind(inner, inner_env)
                if k is not None:
                    facts.launches.append(
                        self.launch_point(call, k, st.index, env, via=via, inner=inner, inner_env=inner_env)
                    )
            reason = self.cuda_reason(inner, inner_env)
            if reason is not None:
                facts.cuda.append(CudaUse(call if via else inner, reason, st.index, via, inner))
            iq = self.qname(inner.func, inner_env)
            if iq == "torch.cuda.is_available":
                facts.cuda_probes.append(CudaUse(call if via else inner, "`torch.cuda.is_available()`", st.index, via, inner))
            if isinstance(inner.func, cst.Attribute) and inner.func.attr.value in FABRIC_TRAINING_METHODS:
                owner = self.value_of(inner.func.value, inner_env)
                if owner is not None and owner.kind == "fabric":
                    facts.training.append(
                        TrainingCall(call if via else inner, f"fabric.{inner.func.attr.value}", st.index, via)
                    )
            self.accelerate_effects(call, inner, inner_env, st.index, via)

    def accelerate_effects(self, call: cst.Call, inner: cst.Call, env: dict[str, Value], index: int, via: str | None) -> None:
        """Accelerate state built, or Accelerate training run, by `inner` (a call that `call`, run
        at top level in statement `index`, runs; through the notebook function `via`, if any)."""
        func = inner.func
        what = N.ACCELERATE_STATES.get(self.qname(func, env) or "")
        if what is not None:
            self.facts.accelerate_states.append(AccelerateState(call if via else inner, what, index, via, inner))
        elif isinstance(func, cst.Attribute) and func.attr.value in N.ACCELERATE_TRAINING_METHODS:
            owner = self.value_of(func.value, env)
            if owner is not None and owner.kind == "accelerator":
                self.facts.accelerate_training.append(
                    TrainingCall(call if via else inner, f"accelerator.{func.attr.value}", index, via)
                )

    def launch_point(self, call, kind, index, env, via=None, inner=None, inner_env=None) -> LaunchPoint:
        at, at_env = (inner, inner_env) if inner is not None else (call, env)
        function = None
        handed: set[str] = set()
        if kind in ("fabric.launch", "notebook_launcher"):
            fn = N.call_arg(at, "function", 0)
            if fn is not None and isinstance(fn.value, cst.Name):
                function = fn.value.value
                v = at_env.get(function)
                if v is not None and v.kind == "function":
                    handed |= self.summary(v.node).free_names
            args = N.call_arg(at, "args", 1)
            if kind == "notebook_launcher" and args is not None:
                handed |= _names_in(args.value)
            if kind == "fabric.launch":
                for a in at.args[1:]:
                    handed |= _names_in(a.value)
        elif kind.startswith("trainer."):
            positional = [a for a in at.args if a.keyword is None]
            for a in positional[1:]:
                handed |= _names_in(a.value)
            for a in at.args:
                if a.keyword is not None and a.keyword.value in (*LAUNCH_DATA_KEYWORDS, "datamodule"):
                    handed |= _names_in(a.value)
        direct = set(handed)
        if via is not None:
            handed |= self.functions[via].free_names if via in self.functions else set()
            handed |= _names_in(call)  # what the notebook passes to the function that launches
        return LaunchPoint(call, kind, index, via, function, frozenset(handed), inner, frozenset(direct))

    def constructor(self, call: cst.Call, env: dict[str, Value]) -> None:
        kind = self.class_kind(self.qname(call.func, env), env)
        if kind in ("trainer", "fabric", "ddp_strategy"):
            self.facts.constructors.append(ConstructorCall(call, kind))

    def constructors_in(self, summary: FunctionSummary) -> None:
        for call in summary.calls:
            self.constructor(call, summary.env)
            q = self.qname(call.func, summary.env)
            if q in ("torch.multiprocessing.set_start_method", "multiprocessing.set_start_method"):
                method = N.call_arg(call, "method", 0)
                value = N.string_value(method.value) if method is not None else None
                if value in ("spawn", "forkserver"):
                    self.facts.start_methods.append((call, value))

    def handoffs(self) -> None:
        """Keep only the data builds whose results reach training (directly or through other data)."""
        facts = self.facts
        reached: list[DataBuild] = []
        # Where training happens: launch points, and top-level Fabric training, which consumes
        # the loaders its statement iterates.
        consumers = [(lp.statement, lp.direct, lp.kind) for lp in facts.launches]
        consumers += [(lp.statement, lp.handed, lp.kind) for lp in facts.launches]
        consumers += [(t.statement, frozenset(facts.statements[t.statement].uses), "Fabric training") for t in facts.training]
        by_name = data_index(facts.data)  # once, not once per consumer
        seen: set[int] = set()  # ids of the reached builds (a build is only ever equal to itself here)
        for at, handed, kind in consumers:
            for build, through in data_chain(facts.data, handed, at + 1, by_name):
                if id(build) not in seen:
                    build.handed_to, build.through = kind, through
                    seen.add(id(build))
                    reached.append(build)
        facts.data = sorted(reached, key=lambda d: d.statement)


def _call_paths(root: cst.CSTNode) -> dict[int, tuple[tuple[tuple[int, int, bool], ...], int]]:
    """For each call under `root`: the path of (block, statement index, in a loop body) that
    leads to it, and its order of evaluation."""
    paths: dict[int, tuple[tuple[tuple[int, int, bool], ...], int]] = {}
    counter = 0

    def visit(node: cst.CSTNode, path: tuple, loop: bool) -> None:
        nonlocal counter
        if isinstance(node, (cst.IndentedBlock, cst.SimpleStatementSuite, cst.Module)):
            for i, stmt in enumerate(node.body):
                visit(stmt, (*path, (id(node), i, loop)), False)
            return
        if isinstance(node, cst.FunctionDef):
            return  # runs when called, not here
        if isinstance(node, cst.Call):
            counter += 1
            paths[id(node)] = (path, counter)
        if isinstance(node, (cst.For, cst.While)):
            head = node.iter if isinstance(node, cst.For) else node.test
            visit(head, path, False)
            visit(node.body, path, True)
            if node.orelse is not None:
                visit(node.orelse, path, False)
            return
        for child in children(node):
            visit(child, path, loop if isinstance(child, (cst.IndentedBlock, cst.SimpleStatementSuite)) else False)

    visit(root.body if isinstance(root, (cst.FunctionDef, cst.ClassDef)) else root, (), False)
    return paths


_ORDER_CACHE: dict[int, tuple[cst.CSTNode, dict]] = {}


def runs_before(root: cst.CSTNode, first: cst.CSTNode, then: cst.CSTNode) -> bool:
    """Can `first` run before `then` when `root` (a statement or function) runs?

    Statements in one block run in order; the branches of an `if`/`try` exclude each other; a loop
    body runs again, so anything in it can run before a later iteration's call; the arguments of a
    call run before it.
    """
    cached = _ORDER_CACHE.get(id(root))
    if cached is None or cached[0] is not root:
        cached = (root, _call_paths(root))
        _ORDER_CACHE[id(root)] = cached
    paths = cached[1]
    a, b = paths.get(id(first)), paths.get(id(then))
    if a is None or b is None:
        return True  # not found: assume the worst
    (pa, na), (pb, nb) = a, b
    common_loop = False
    for x, y in zip(pa, pb):
        if x == y:
            common_loop = common_loop or x[2]
            continue
        if x[0] == y[0]:  # same block, different statements
            return x[1] < y[1] or common_loop or x[2]
        return common_loop  # different branches of one compound statement
    if len(pa) != len(pb):
        return True  # one is in a block nested in the other's statement: be conservative
    return na < nb or contains(then, first)


def data_index(builds: list[DataBuild]) -> dict[str, tuple[list[DataBuild], list[int]]]:
    """Name -> (the builds that bind it, in order, and their statements) for `data_chain`."""
    by_name: dict[str, tuple[list[DataBuild], list[int]]] = {}
    for d in builds:
        for n in d.names:
            found, statements = by_name.setdefault(n, ([], []))
            found.append(d)
            statements.append(d.statement)
    return by_name


def data_chain(builds: list[DataBuild], names, before: int, by_name: dict | None = None):
    """The data builds that `names`, read by a statement at index `before`, come from: yields
    (build, the name it reaches them through). Follows statements, not names: in
    `ds = split(ds)` the `ds` read is the one built before. `by_name`: `data_index(builds)`, when
    the caller asks for many chains."""
    if by_name is None:
        by_name = data_index(builds)
    todo = deque((n, None, before) for n in sorted(names))  # sorted, first in first out: stable messages
    seen: set[tuple[str, int]] = set()
    while todo:
        name, through, limit = todo.popleft()
        if (name, limit) in seen:
            continue
        seen.add((name, limit))
        found, statements = by_name.get(name, ((), ()))
        # The last build before `limit` (builds come in statement order): bisected, not filtered.
        k = bisect.bisect_left(statements, limit)
        if k == 0:
            continue
        build = found[k - 1]
        yield build, through
        todo.extend((n, through or name, build.statement) for n in sorted(_names_in(build.node)))


def _cpu_only_calls(if_nodes: list[cst.If]) -> set[int]:
    """Calls that run only when CUDA is absent: the `else` of `if torch.cuda.is_available():`
    (or the body of `if not torch.cuda.is_available():`)."""
    out: set[int] = set()
    inside: set[int] = set()  # ids of the `if`s in a branch walked already: their calls are in `out`
    for node in if_nodes:
        if id(node) in inside:
            continue  # an `elif` chain of probes would otherwise be walked once per `elif`
        test = node.test
        negated = isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not)
        core = test.expression if negated else test
        probe = any(
            isinstance(n, cst.Call) and isinstance(n.func, cst.Attribute) and n.func.attr.value == "is_available"
            and "cuda" in (N.dotted(n.func.value) or "")
            for n in walk(core)
        )
        branch = node.body if negated else node.orelse
        if probe and branch is not None:
            for n in walk(branch):
                kind = type(n)
                if kind is cst.Call:
                    out.add(id(n))
                elif kind is cst.If:
                    inside.add(id(n))
    return out


def _cpu_map(expr: cst.BaseExpression) -> bool:
    """A `device_map` that keeps everything on the CPU: "cpu", None, or a dict of "cpu" values."""
    if isinstance(expr, cst.Name):
        return expr.value == "None"
    if isinstance(expr, cst.Dict):
        return bool(expr.elements) and all(
            isinstance(el, cst.DictElement) and N.string_value(el.value) == "cpu" for el in expr.elements
        )
    return N.string_value(expr) == "cpu"


def _pins_memory(node: cst.CSTNode | None) -> bool:
    if not isinstance(node, cst.Call):
        return False
    arg = N.call_arg(node, "pin_memory")
    return arg is not None and isinstance(arg.value, cst.Name) and arg.value.value == "True"


def _names_in(node: cst.CSTNode) -> set[str]:
    return scan(node).loads


def _short(expr: cst.BaseExpression) -> str:
    text = source_of(expr)
    return text if len(text) <= 30 else text[:27] + "..."


def analyse(module: cst.Module) -> NotebookFacts:
    """The facts of a joined notebook module (see `nbrefactor.notebook.join`)."""
    return _Analysis(module).run()
