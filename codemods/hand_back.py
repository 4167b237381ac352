"""Fixes for state after the launch (NBR5xx): make the notebook and the training processes agree.

NBR501: read the logger's version right before the launch statement, so the forked processes
inherit the version the notebook reads afterwards.
"""

from __future__ import annotations

import libcst as cst

from codemods.after_launch import logger_reads
from codemods.cells import BodyPlan
from codemods.facts import NotebookFacts

_CHOOSE_VERSION = "# Choose the log folder's version before the fork: training writes there, the notebook reads it after."


def _fixable_launch(facts: NotebookFacts, launch: int, trainer: str | None) -> bool:
    """A top-level line that launches, on a Trainer bound before it."""
    st = facts.statements[launch]
    if not isinstance(st.node, cst.SimpleStatementLine):
        return False
    return trainer is None or (trainer not in st.defines and facts.defined_between(trainer, -1, launch - 1))


def choose_logger_version(facts: NotebookFacts) -> tuple[BodyPlan, list[tuple[str, int, str]]]:
    plan, changes = BodyPlan(), []
    inserts: dict[int, dict[str, str]] = {}  # launch statement -> logger -> how to name it there
    for read in logger_reads(facts):
        if _fixable_launch(facts, read.launch, read.logger.trainer):
            inserts.setdefault(read.launch, {}).setdefault(read.logger.key, read.through)
    for launch, loggers in inserts.items():
        names = list(loggers.values())
        lines = [cst.parse_statement(f"{name}.version\n") for name in names]
        lines[0] = lines[0].with_changes(leading_lines=[cst.EmptyLine(comment=cst.Comment(_CHOOSE_VERSION))])
        plan.replace(launch, [*lines, facts.statements[launch].node])
        cell = facts.statements[launch].cell
        chosen = " and ".join(f"`{n}.version`" for n in names)
        changes.append(("NBR501", cell, f"{chosen} read before the launch, so the notebook and the training processes use one log folder"))
    return plan, changes
