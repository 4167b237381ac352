"""The rule contract: a code, a name, a message, examples that are its tests, and ruff-style docs.

A rule reads the shared `NotebookFacts` (one analysis pass per notebook) and yields `Finding`s that
point at libcst nodes; the checker turns nodes into cell, row and column.
"""

from __future__ import annotations

import enum
import inspect
from dataclasses import dataclass
from typing import ClassVar, Iterator

import libcst as cst

from codemods.facts import CudaUse, NotebookFacts, runs_before


class Applicability(str, enum.Enum):
    """What `nbrefactor fix` may do about a finding (ruff's terms)."""

    SAFE = "safe"  # keeps what the notebook computes; applied by default
    UNSAFE = "unsafe"  # may change what it computes; needs --unsafe-fixes
    NONE = "none"  # no automatic fix: the message says what to do


class FixAvailability(str, enum.Enum):
    """Whether the rule's findings have a fix at all (ruff's FixAvailability). Which fix a finding
    gets (safe, unsafe, none) is decided per finding, by asking the fixer: see `nbrefactor.labels`."""

    ALWAYS = "always"  # every finding has a fix (possibly needing --unsafe-fixes or an option)
    SOMETIMES = "sometimes"  # some findings have a fix, others need a manual step
    NONE = "none"  # never fixed automatically

    @property
    def sentence(self) -> str:
        return {"always": "Fix is always available.", "sometimes": "Fix is sometimes available.", "none": "Fix is not available."}[self.value]


@dataclass(frozen=True)
class Finding:
    node: cst.CSTNode
    message: str


@dataclass(frozen=True)
class Invalid:
    """A notebook (cells split by `# %%`) the rule flags; `at` is (cell, row, column), 1-based.
    With `context="script"` the code is a whole script: `at` is (1, line, column)."""

    code: str
    at: tuple[int, int, int]
    message_contains: str = ""
    context: str = "notebook"


@dataclass(frozen=True)
class Valid:
    """Code the rule does not flag in `context` (a plain string in VALID is a notebook)."""

    code: str
    context: str = "notebook"


CONTEXT_WORDS = {("notebook",): "notebooks", ("script",): "scripts", ("notebook", "script"): "notebooks and scripts"}


class Rule:
    code: ClassVar[str]
    name: ClassVar[str]
    summary: ClassVar[str]  # one line, for tables
    applicability: ClassVar[Applicability]  # the safety of the rule's fixes where they are offered
    fix_availability: ClassVar[FixAvailability]  # always / sometimes / none (ruff's model)
    fix_title: ClassVar[str | None] = None
    # Where the rule applies: "notebook" (a kernel that forks) and/or "script" (a plain `.py`
    # file run by `python`, whose `strategy="ddp"` starts subprocesses that re-run it).
    contexts: ClassVar[tuple[str, ...]] = ("notebook",)
    context_reason: ClassVar[str] = ""  # why the rule applies (or not) to the other context
    VALID: ClassVar[list[str | Valid]] = []
    INVALID: ClassVar[list[Invalid]] = []

    def __init__(self, context: str = "notebook"):
        self.context = context  # the context of the file being checked

    def check(self, facts: NotebookFacts) -> Iterator[Finding]:
        raise NotImplementedError

    @classmethod
    def applies_to(cls) -> str:
        return CONTEXT_WORDS.get(tuple(cls.contexts), " and ".join(f"{c}s" for c in cls.contexts))

    @classmethod
    def docs(cls) -> str:
        """The rule's documentation (its docstring: What it does / Why is this bad? / ...), with
        the contexts it applies to."""
        reason = cls.context_reason
        reason = f" {reason[0].upper()}{reason[1:]}." if reason else ""
        return f"Applies to: {cls.applies_to()}.{reason}\n\n" + inspect.cleandoc(cls.__doc__ or "")

    def forks_here(self, facts: NotebookFacts) -> bool:
        """Does the file fork its training processes? A notebook that launches always does; a
        script only with a fork-based strategy or `notebook_launcher` (NBR601)."""
        if self.context != "script":
            return True
        from codemods.rules.nbr601_notebook_launch_in_script import script_forks

        return script_forks(facts)

    def worded(self, message: str) -> str:
        """`message` in the words of the context: a script's process is not a notebook's."""
        if self.context != "script":
            return message
        return message.replace("the notebook process", "the script's process").replace("in a notebook", "in this script")


def runs_before_a_launch(facts: NotebookFacts, use: CudaUse) -> bool:
    """Does this use run in the notebook process before some fork-based launch point runs?

    Statements before the last launch statement do. Within the launch statement (or the notebook
    function it calls) the order of evaluation decides: see `codemods.facts.runs_before`.
    """
    last = facts.last_launch
    if last is None or use.statement > last:
        return False
    if use.statement < last:
        return True
    statement = facts.statements[last].node
    for lp in facts.launches:
        if lp.statement != last:
            continue
        if use.via is not None and use.via == lp.via and use.node is lp.node and lp.inner is not None:
            function = facts.functions.get(use.via)
            if function is not None and runs_before(function.node, use.inner, lp.inner):
                return True
        elif use.node is not lp.node and runs_before(statement, use.node, lp.node):
            return True
    return False
