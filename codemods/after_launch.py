"""What the notebook reads after a forked launch, and whether the training processes changed it.

After `trainer.fit(...)` with a fork-based strategy returns, the notebook process holds only what
Lightning sends back from rank 0 (`lightning/pytorch/strategies/launchers/multiprocessing.py`,
`_MultiProcessingLauncher._collect_rank_zero_results` / `_recover_results_in_main_process`): the
best checkpoint's path, the model's weights (`load_state_dict`), `trainer.state` and
`trainer.callback_metrics`. Everything else the training processes changed stays in them. This
module finds the notebook's reads that depend on such state; the NBR5xx rules report them.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from codemods import names as N
from codemods.facts import NotebookFacts, qualified_name
from codemods.walk import walk

VERSIONED_LOGGERS = {
    "lightning.pytorch.loggers.CSVLogger",
    "lightning.pytorch.loggers.csv_logs.CSVLogger",
    "lightning.pytorch.loggers.TensorBoardLogger",
    "lightning.pytorch.loggers.tensorboard.TensorBoardLogger",
}
VERSIONED_ATTRIBUTES = ("log_dir", "version", "experiment")  # each picks the version on first use


def top_level_code(node: cst.CSTNode):
    """The nodes of a statement that run when it runs (not function or class bodies)."""
    return walk(node, enter=lambda n: n is node or not isinstance(n, (cst.FunctionDef, cst.ClassDef, cst.Lambda)))


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


def _logger_variables(facts: NotebookFacts) -> dict[str, cst.Call]:
    """Top-level `name = CSVLogger(...)` / `TensorBoardLogger(...)` (last binding wins)."""
    out: dict[str, cst.Call] = {}
    for st in facts.statements:
        if not isinstance(st.node, cst.SimpleStatementLine):
            continue
        for small in st.node.body:
            if isinstance(small, cst.Assign) and len(small.targets) == 1 and isinstance(small.targets[0].target, cst.Name):
                name = small.targets[0].target.value
                if isinstance(small.value, cst.Call) and qualified_name(small.value.func, facts.env) in VERSIONED_LOGGERS:
                    out[name] = small.value
                else:
                    out.pop(name, None)
    return out


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
