"""What the notebook reads after a forked launch, and whether the training processes changed it.

After `trainer.fit(...)` with a fork-based strategy returns, the notebook process holds only what
Lightning sends back from rank 0 (`lightning/pytorch/strategies/launchers/multiprocessing.py`,
`_MultiProcessingLauncher._collect_rank_zero_results` / `_recover_results_in_main_process`): the
best checkpoint's path, the model's weights (`load_state_dict`), `trainer.state` and
`trainer.callback_metrics`. Everything else the training processes changed stays in them. This
module finds the notebook's reads that depend on such state; the NBR5xx rules report them.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

import libcst as cst

from codemods import names as N
from codemods.facts import NotebookFacts, qualified_name, scan
from codemods.walk import KindOf, children, walk

VERSIONED_LOGGERS = {
    "lightning.pytorch.loggers.CSVLogger",
    "lightning.pytorch.loggers.csv_logs.CSVLogger",
    "lightning.pytorch.loggers.TensorBoardLogger",
    "lightning.pytorch.loggers.tensorboard.TensorBoardLogger",
}
VERSIONED_ATTRIBUTES = ("log_dir", "version", "experiment")  # each picks the version on first use


def _once_per_facts(compute):
    """`compute(facts)` worked out once per facts (a rule and its fix both ask for the same reads);
    each caller gets its own list."""
    key = compute.__name__

    @functools.wraps(compute)
    def once(facts: NotebookFacts):
        known = facts._derived.get(key)
        if known is None:
            known = facts._derived[key] = compute(facts)
        return list(known)

    return once


def top_level_code(node: cst.CSTNode):
    """The nodes of a statement that run when it runs (not function or class bodies)."""
    return walk(node, enter=lambda n: n is node or _not_a_definition(n))


def trainer_launches(facts: NotebookFacts) -> dict[str, list[int]]:
    """Top-level Trainer names -> the statements where `name.fit/validate/test/predict(...)` forks."""
    out: dict[str, list[int]] = {}
    for lp in facts.launches:
        func = lp.node.func
        if lp.via is None and lp.kind.startswith("trainer.") and isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name):
            out.setdefault(func.value.value, []).append(lp.statement)
    return out


# ---------------------------------------------------------------------------------------------
# NBR501: the logger's version


@dataclass(frozen=True)
class Logger:
    """A CSV or TensorBoard logger whose version is chosen on first use."""

    key: str  # the constructor call's position, or "default:<trainer>"
    trainer: str | None  # the Trainer it logs for (default loggers)
    variable: str | None  # the notebook name that holds it, if any


@dataclass(frozen=True)
class LoggerRead:
    node: cst.Attribute  # `trainer.logger.log_dir`, `logger.version`, ...
    statement: int
    launch: int  # the statement of the forked launch before it
    logger: Logger
    through: str  # how the fix names the logger: "trainer.logger" or "logger"


def bound_calls(facts: NotebookFacts, pick) -> dict[str, object]:
    """Top-level `name = <call>` lines, for the calls `pick` recognises (it returns what to keep,
    or None): name -> that, the last binding winning (a name bound to something else is dropped)."""
    out: dict[str, object] = {}
    for st in facts.statements:
        for target, value in _simple_assignments(st.node):
            kept = pick(value) if isinstance(value, cst.Call) else None
            if kept is None:
                out.pop(target, None)
            else:
                out[target] = kept
    return out


def _logger_variables(facts: NotebookFacts) -> dict[str, cst.Call]:
    """Top-level `name = CSVLogger(...)` / `TensorBoardLogger(...)`."""
    return bound_calls(facts, lambda call: call if qualified_name(call.func, facts.env) in VERSIONED_LOGGERS else None)


def _unpinned(call: cst.Call) -> bool:
    return N.call_arg(call, "version", 2) is None


def trainer_logger(facts: NotebookFacts, trainer: str, variables: dict[str, cst.Call]) -> Logger | None:
    """The versioned logger a top-level Trainer logs to, if its version is not pinned."""
    value = facts.env.get(trainer)
    if value is None or value.kind != "trainer" or not isinstance(value.node, cst.Call):
        return None
    arg = N.call_arg(value.node, "logger")
    if arg is None or (isinstance(arg.value, cst.Name) and arg.value.value == "True"):
        return Logger(f"default:{trainer}", trainer, None)  # TensorBoardLogger or CSVLogger
    if isinstance(arg.value, cst.Name) and arg.value.value in variables:
        call = variables[arg.value.value]
        return Logger(f"call:{id(call)}", trainer, arg.value.value) if _unpinned(call) else None
    if isinstance(arg.value, cst.Call) and qualified_name(arg.value.func, facts.env) in VERSIONED_LOGGERS:
        return Logger(f"call:{id(arg.value)}", trainer, None) if _unpinned(arg.value) else None
    return None


def _logger_read(node: cst.Attribute, loggers: dict[str, Logger], by_variable: dict[str, Logger]) -> tuple[Logger, str] | None:
    """Which logger a `... .log_dir` / `.version` / `.experiment` reads, and how to name it."""
    if node.attr.value not in VERSIONED_ATTRIBUTES:
        return None
    owner = node.value
    if isinstance(owner, cst.Name):
        if node.attr.value == "log_dir" and owner.value in loggers:  # `trainer.log_dir`
            return loggers[owner.value], f"{owner.value}.logger"
        if owner.value in by_variable:
            return by_variable[owner.value], owner.value
    if isinstance(owner, cst.Attribute) and owner.attr.value == "logger" and isinstance(owner.value, cst.Name):
        trainer = owner.value.value
        if trainer in loggers:
            return loggers[trainer], f"{trainer}.logger"
    return None


@_once_per_facts
def logger_reads(facts: NotebookFacts) -> list[LoggerRead]:
    """Reads of an unpinned logger's version-dependent attributes in the notebook process after a
    forked launch, with no read before that launch (which would have chosen the version for all)."""
    variables = _logger_variables(facts)
    launches = trainer_launches(facts)
    loggers = {t: lg for t in launches if (lg := trainer_logger(facts, t, variables)) is not None}
    by_variable = {lg.variable: lg for lg in loggers.values() if lg.variable}
    if not loggers:
        return []
    first_launch: dict[str, int] = {}  # logger key -> the first forked launch that logs to it
    for trainer, logger in loggers.items():
        first_launch[logger.key] = min(first_launch.get(logger.key, launches[trainer][0]), *launches[trainer])
    chosen_at: dict[str, int] = {}  # logger key -> first statement that reads a versioned attribute
    reads: list[LoggerRead] = []
    for st in facts.statements:
        for node in top_level_code(st.node):
            if not isinstance(node, cst.Attribute):
                continue
            found = _logger_read(node, loggers, by_variable)
            if found is None:
                continue
            logger, through = found
            chosen_at.setdefault(logger.key, st.index)
            launch = first_launch[logger.key]
            if chosen_at[logger.key] > launch:
                reads.append(LoggerRead(node, st.index, launch, logger, through))
    return reads


# ---------------------------------------------------------------------------------------------
# NBR502: state the training processes change and the notebook reads afterwards

CALLBACK = "lightning.pytorch.Callback"
CALLBACK_BASES = {CALLBACK, "lightning.pytorch.callbacks.Callback", "lightning.pytorch.callbacks.callback.Callback"}
MUTATING_METHODS = {
    "append", "extend", "insert", "add", "update", "setdefault", "pop", "popitem", "remove", "clear",
    "discard", "appendleft", "extendleft",
}
NOT_IN_TRAINING = {"__init__", "forward", "__repr__", "__str__"}  # methods the notebook itself calls


@dataclass(frozen=True)
class Mutation:
    """`history.append(...)` (a notebook global) or `self.losses.append(...)` (an attribute of an
    instance of a notebook class), in code that runs in the training processes."""

    node: cst.CSTNode
    name: str  # the global, or the attribute
    owner: str | None  # the notebook class whose `self` it is, for attributes
    where: str  # for messages: "the callback method `History.on_train_epoch_end`", ...
    launched: str | None = None  # the launched Fabric function it is in; None: a Trainer runs it


@dataclass(frozen=True)
class StaleRead:
    node: cst.CSTNode  # the read in the notebook process
    statement: int
    launch: int
    mutation: Mutation
    shown: str  # what is read: "history", "recorder.losses"
    assignable: bool = True  # the fix can set it again (`trainer.current_epoch` is read-only)


def loads(root: cst.CSTNode):
    """The names and attributes a statement reads when it runs (not what it binds, not `.attr`
    or `keyword=` names, not function bodies), in source order."""
    stack: list[cst.CSTNode] = [root]
    while stack:
        n = stack.pop()
        step = _LOAD_STEP[type(n)]
        if step == "definition":
            if n is root:
                stack.extend(reversed(children(n)))
        elif step == "name":
            yield n
        elif step == "attribute":
            yield n
            stack.append(n.value)
        elif step == "arg":
            stack.append(n.value)
        elif step == "for":
            stack.extend(reversed([x for x in (n.iter, n.body, n.orelse) if x is not None]))
        elif step == "target":
            target = _LOAD_STEP[type(n.target)]
            if target == "attribute":
                stack.append(n.target.value)  # `x.attr = v` reads x, stores x.attr
            elif target != "name":
                stack.extend(reversed(children(n)))
        elif step != "binding":
            stack.extend(reversed(children(n)))


# What `loads` does with a node, by its type.
_LOAD_STEP = KindOf((
    ((cst.FunctionDef, cst.ClassDef, cst.Lambda), "definition"), (cst.Name, "name"), (cst.Attribute, "attribute"),
    (cst.Arg, "arg"), (cst.For, "for"), (cst.AssignTarget, "target"), ((cst.Import, cst.ImportFrom, cst.AsName), "binding"),
), "walk")


def _changed(node: cst.CSTNode) -> cst.BaseExpression | None:
    """What a node changes in place: `x.append(...)` / `x[k] = v` / `x += v` -> x; `x.attr = v`
    -> `x.attr`; anything else -> None. (Concrete libcst classes, tested by identity.)"""
    t = type(node)
    if t is cst.Call:
        func = node.func
        return func.value if type(func) is cst.Attribute and func.attr.value in MUTATING_METHODS else None
    if t is cst.AssignTarget or t is cst.AugAssign or t is cst.AnnAssign:
        target = node.target
        kind = type(target)
        if kind is cst.Subscript:
            return target.value
        if t is cst.AugAssign or kind is cst.Attribute:
            return target
    return None


def _locals(function: cst.FunctionDef) -> set[str]:
    params = {p.name.value for p in (*function.params.params, *function.params.posonly_params, *function.params.kwonly_params)}
    return params | scan(function.body).binds


def _body_mutations(function: cst.FunctionDef, owner: str | None, where: str, globals_: set[str], launched: str | None = None) -> list[Mutation]:
    declared = {n.name.value for g in walk(function.body) if type(g) is cst.Global for n in g.names}
    local = _locals(function) - declared
    out: list[Mutation] = []
    for node in walk(function.body, enter=_not_a_definition):
        changed = _changed(node)
        if type(node) is cst.AssignTarget and type(node.target) is cst.Name and node.target.value in declared:
            changed = node.target  # `global best; best = ...`
        kind = type(changed)
        if kind is cst.Name and changed.value in globals_ and changed.value not in local:
            out.append(Mutation(node, changed.value, None, where, launched))
        elif owner is not None and kind is cst.Attribute and type(changed.value) is cst.Name and changed.value.value == "self":
            out.append(Mutation(node, changed.attr.value, owner, where, launched))
    return out


def _not_a_definition(node: cst.CSTNode) -> bool:
    return _LOAD_STEP[type(node)] != "definition"


def _class_kind(facts: NotebookFacts, node: cst.ClassDef) -> str | None:
    if any(qualified_name(base.value, facts.env) in CALLBACK_BASES for base in node.bases):
        return "callback"
    return "LightningModule" if node.name.value in facts.lightning_module_classes else None


def training_mutations(facts: NotebookFacts) -> list[Mutation]:
    """What code run in the training processes changes: callbacks' and LightningModules' methods
    (a Trainer runs them) and the launched Fabric functions."""
    globals_ = {n for st in facts.statements for n in st.defines}
    out: list[Mutation] = []
    for st in facts.statements:
        kind = _class_kind(facts, st.node) if isinstance(st.node, cst.ClassDef) else None
        if kind is None:
            continue
        for method in st.node.body.body:
            if isinstance(method, cst.FunctionDef) and method.name.value not in NOT_IN_TRAINING:
                where = f"the {kind} method `{st.node.name.value}.{method.name.value}`"
                out += _body_mutations(method, st.node.name.value, where, globals_)
    for name in sorted({lp.function for lp in facts.launches if lp.function}):
        summary = facts.functions.get(name)
        if summary is not None and isinstance(summary.node, cst.FunctionDef):
            out += _body_mutations(summary.node, None, f"the launched function `{name}`", globals_, launched=name)
    return out


def _instances(facts: NotebookFacts, classes: set[str]) -> dict[str, str]:
    """Top-level `name = NotebookClass(...)` -> the class, for the classes asked."""
    return bound_calls(facts, lambda call: call.func.value if isinstance(call.func, cst.Name) and call.func.value in classes else None)


def _simple_assignments(node: cst.CSTNode):
    if isinstance(node, cst.SimpleStatementLine):
        for small in node.body:
            if isinstance(small, cst.Assign) and len(small.targets) == 1 and isinstance(small.targets[0].target, cst.Name):
                yield small.targets[0].target.value, small.value


def _launches_of(facts: NotebookFacts, mutation: Mutation, trainers: dict[str, list[int]]) -> list[int]:
    """The statements whose launch runs the mutating code (`trainers`: `trainer_launches(facts)`)."""
    if mutation.launched is not None:
        return sorted({lp.statement for lp in facts.launches if lp.function == mutation.launched})
    return sorted({s for starts in trainers.values() for s in starts})


def _handed(facts: NotebookFacts, launch: int, trainers: dict[str, list[int]]) -> set[str]:
    """Names a launch statement gives its training: its own reads, and those of the statements
    that built the Trainers it launches (`callbacks=[recorder]`)."""
    st = facts.statements[launch]
    names = set(st.uses)
    trainers = {t for t, starts in trainers.items() if launch in starts}
    for other in facts.statements[:launch]:
        if other.defines & trainers:
            names |= other.uses
    return names


@_once_per_facts
def stale_reads(facts: NotebookFacts) -> list[StaleRead]:
    """The first read, after each forked launch, of what that launch's training processes changed."""
    mutations = training_mutations(facts)
    if not mutations:
        return []
    trainers = trainer_launches(facts)
    watched = {}
    for m in mutations:
        watched.setdefault((m.owner, m.name), (m, _launches_of(facts, m, trainers)))
    instances = _instances(facts, {owner for owner, _ in watched if owner})
    reads: list[StaleRead] = []
    reported: set[tuple[str, int]] = set()
    for st in facts.statements:
        for node in loads(st.node):
            found = _stale(facts, node, st.index, watched, instances, trainers)
            if found is not None and (found[2], found[1]) not in reported:
                reported.add((found[2], found[1]))
                reads.append(StaleRead(node, st.index, found[1], found[0], found[2]))
    return reads


def _stale(facts: NotebookFacts, node: cst.CSTNode, index: int, watched: dict, instances: dict[str, str], trainers: dict):
    """(mutation, launch, what is read) when `node`, in statement `index`, reads stale state."""
    if isinstance(node, cst.Name):
        name, key = node.value, (None, node.value)
    elif isinstance(node, cst.Attribute) and isinstance(node.value, cst.Name) and node.value.value in instances:
        name, key = node.value.value, (instances[node.value.value], node.attr.value)
    else:
        return None
    if key not in watched:
        return None
    mutation, launches = watched[key]
    before = [s for s in launches if s < index]
    if not before:
        return None
    launch = before[-1]
    if facts.defined_between(name, launch, index - 1) or name in facts.statements[index].defines:
        return None
    if key[0] is not None and _attribute_set_between(facts, f"{name}.{key[1]}", launch, index):
        return None  # `recorder.losses = ...` after the launch: the notebook's own value again
    if key[0] is not None and name not in _handed(facts, launch, trainers):
        return None  # an instance the launch never saw
    shown = name if key[0] is None else f"{name}.{key[1]}"
    return mutation, launch, shown


def _attribute_set_between(facts: NotebookFacts, shown: str, after: int, before: int) -> bool:
    """Does a statement between two others assign `shown` (`recorder.losses = ...`)?"""
    for st in facts.statements[after + 1 : before]:
        for node in top_level_code(st.node):
            target = node.target if isinstance(node, (cst.AssignTarget, cst.AnnAssign)) else None
            if isinstance(target, cst.Attribute) and target.attr.value == shown.rsplit(".", 1)[-1] \
                    and facts.module.code_for_node(target) == shown:
                return True
    return False


# ---------------------------------------------------------------------------------------------
# NBR504: Lightning's own state that stays in the training processes

# Checked against Lightning 2.6 on 2 forked CPU processes: after `fit`, these read as if no
# training ran (0, {}, None, "", {}, tensor(inf)); `best_model_path`, `callback_metrics` and
# `state` come back.
TRAINER_PROPERTIES = ("current_epoch", "global_step", "logged_metrics", "progress_bar_metrics")  # read-only
CALLBACK_STATE = {
    "ModelCheckpoint": ("best_model_score", "best_k_models", "kth_best_model_path", "kth_value", "last_model_path", "current_score"),
    "EarlyStopping": ("stopped_epoch", "best_score", "wait_count"),
}
TRAINER_CALLBACKS = {"checkpoint_callback": "ModelCheckpoint", "early_stopping_callback": "EarlyStopping"}


def _lightning_callbacks(facts: NotebookFacts) -> dict[str, str]:
    """Top-level `name = ModelCheckpoint(...)` / `EarlyStopping(...)` -> the class's short name."""
    def short(call: cst.Call) -> str | None:
        q = qualified_name(call.func, facts.env)
        name = q.rsplit(".", 1)[-1] if q and q.startswith("lightning.pytorch.callbacks") else None
        return name if name in CALLBACK_STATE else None

    return bound_calls(facts, short)


def _lightning_state(node: cst.CSTNode, trainers: set[str], callbacks: dict[str, str]) -> tuple[str, str, bool] | None:
    """(the object read from, its class, assignable) when `node` reads state Lightning leaves behind."""
    if not isinstance(node, cst.Attribute):
        return None
    owner, attr = node.value, node.attr.value
    if isinstance(owner, cst.Name) and owner.value in trainers and attr in TRAINER_PROPERTIES:
        return owner.value, "Trainer", False
    if isinstance(owner, cst.Name) and owner.value in callbacks and attr in CALLBACK_STATE[callbacks[owner.value]]:
        return owner.value, callbacks[owner.value], True
    if (isinstance(owner, cst.Attribute) and isinstance(owner.value, cst.Name) and owner.value.value in trainers
            and owner.attr.value in TRAINER_CALLBACKS and attr in CALLBACK_STATE[TRAINER_CALLBACKS[owner.attr.value]]):
        return owner.value.value, TRAINER_CALLBACKS[owner.attr.value], True
    return None


@_once_per_facts
def lightning_state_reads(facts: NotebookFacts) -> list[StaleRead]:
    """The first read, after each forked Trainer launch, of Lightning state the launch leaves in
    the training processes (`trainer.current_epoch`, `checkpoint.best_model_score`, ...)."""
    launches = trainer_launches(facts)
    if not launches:
        return []
    callbacks = _lightning_callbacks(facts)
    every = sorted({s for starts in launches.values() for s in starts})
    reads: list[StaleRead] = []
    reported: set[tuple[str, int]] = set()
    for st in facts.statements:
        for node in loads(st.node):
            found = _lightning_state(node, set(launches), callbacks)
            if found is None:
                continue
            name, kind, assignable = found
            starts = launches.get(name) or [s for s in every if name in _handed(facts, s, launches)]
            launch = max((s for s in starts if s < st.index), default=None)
            shown = facts.module.code_for_node(node)
            if launch is None or (shown, launch) in reported or facts.defined_between(name, launch, st.index - 1):
                continue
            if assignable and _attribute_set_between(facts, shown, launch, st.index):
                continue
            reported.add((shown, launch))
            mutation = Mutation(node, node.attr.value, kind, f"Lightning's {kind}")
            reads.append(StaleRead(node, st.index, launch, mutation, shown, assignable))
    return reads
