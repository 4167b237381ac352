"""Fixes for state after the launch (NBR5xx): make the notebook and the training processes agree.

NBR501: read the logger's version right before the launch statement, so the forked processes
inherit the version the notebook reads afterwards.

NBR502: around a top-level `trainer.fit(...)` line, a callback that saves on rank 0, when the run
ends, what the notebook reads afterwards, and the loads after it:

    class HandBack(L.Callback):
        ...
    hand_back = HandBack(tempfile.mkdtemp(prefix="nbrefactor-") + "/hand_back.pt", lambda: {"lrs": lrs})
    trainer.callbacks.append(hand_back)
    trainer.fit(model)
    trainer.callbacks.remove(hand_back)
    handed_back = torch.load(hand_back.path, map_location="cpu", weights_only=False)
    lrs = handed_back["lrs"]

The lambda runs in rank 0's process at `teardown`, so it reads that process's objects.
"""

from __future__ import annotations

import libcst as cst

from codemods.after_launch import (
    CALLBACK,
    lightning_state_reads,
    logger_reads,
    stale_reads,
    trainer_launches,
)
from codemods.cells import BodyPlan
from codemods.facts import NotebookFacts, fresh_name, module_alias, qualified_name

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


_HAND_BACK_CLASS = '''
class {name}({base}):
    """Rank 0 saves what the notebook reads after the run; the notebook loads it (forked
    processes do not share memory with the notebook)."""

    def __init__(self, path, values):
        self.path, self.values = path, values

    def teardown(self, trainer, pl_module, stage):
        if trainer.is_global_zero:
            {torch}.save(self.values(), self.path)
'''


def _callback_base(facts: NotebookFacts) -> str | None:
    """How the notebook names Lightning's `Callback` (`L.Callback`, `pl.Callback`, `Callback`)."""
    for name, v in facts.env.items():
        if v.kind == "module" and qualified_name(cst.Name(name), facts.env) == CALLBACK:
            return name
    for name, v in facts.env.items():
        if v.kind == "module" and qualified_name(cst.Attribute(cst.Name(name), cst.Name("Callback")), facts.env) == CALLBACK:
            return f"{name}.Callback"
    return None


def _launching_trainer(facts: NotebookFacts, launch: int, trainers: dict[str, list[int]]) -> str | None:
    """The Trainer a top-level one-call line launches (`trainer.fit(...)`, `r = trainer.test(...)`);
    `trainers`: `trainer_launches(facts)`."""
    st = facts.statements[launch]
    if not isinstance(st.node, cst.SimpleStatementLine) or len(st.node.body) != 1:
        return None
    return next((t for t, starts in trainers.items() if launch in starts), None)


def hand_back_state(facts: NotebookFacts) -> tuple[BodyPlan, list[tuple[str, int, str]]]:
    plan, changes = BodyPlan(), []
    wanted: dict[int, list[str]] = {}  # launch statement -> what the notebook reads after it
    trainers = trainer_launches(facts)
    base = _callback_base(facts)
    if not trainers or base is None:
        return plan, changes  # nothing a Trainer launches, or no Callback to hand it back with: no reads looked for
    for read in [*stale_reads(facts), *lightning_state_reads(facts)]:
        if read.assignable and read.mutation.launched is None and _launching_trainer(facts, read.launch, trainers) is not None:
            shown = wanted.setdefault(read.launch, [])
            if read.shown not in shown:
                shown.append(read.shown)
    if not wanted:
        return plan, changes
    taken = set(facts.env) | {n for st in facts.statements for n in st.uses}
    torch = module_alias(facts, "torch") or "torch"
    tempfile = module_alias(facts, "tempfile")
    class_name = fresh_name("HandBack", taken)
    for number, (launch, shown) in enumerate(sorted(wanted.items())):
        lines: list[cst.BaseStatement] = []
        if number == 0:
            imports = [f"import {m}" for m, alias in (("torch", module_alias(facts, "torch")), ("tempfile", tempfile)) if alias is None]
            lines += [cst.parse_statement(f"{i}\n") for i in imports]
            definition = cst.parse_statement(_HAND_BACK_CLASS.format(name=class_name, base=base, torch=torch).lstrip())
            lines.append(definition.with_changes(leading_lines=[cst.EmptyLine()] * (2 if imports else 1)))
            lines[0] = lines[0].with_changes(leading_lines=[cst.EmptyLine()])
        lines += _round_trip(facts, launch, shown, class_name, torch, tempfile or "tempfile", taken)
        plan.replace(launch, lines)
        cell = facts.statements[launch].cell
        changes.append(("NBR502", cell, f"rank 0 hands back {', '.join(shown)} when the run ends; the notebook loads them after it"))
    return plan, changes


def _round_trip(facts, launch, shown, class_name, torch, tempfile, taken) -> list[cst.BaseStatement]:
    trainer = _launching_trainer(facts, launch, trainer_launches(facts))
    callback, loaded = fresh_name("hand_back", taken), fresh_name("handed_back", taken)
    values = "".join(f'        "{s}": {s},\n' for s in shown)
    text = (
        f"{callback} = {class_name}(\n"
        f'    {tempfile}.mkdtemp(prefix="nbrefactor-") + "/hand_back.pt",\n'
        f"    lambda: {{\n{values}    }},\n"
        ")\n"
        f"{trainer}.callbacks.append({callback})\n"
    )
    after = (
        f"{trainer}.callbacks.remove({callback})\n"
        f'{loaded} = {torch}.load({callback}.path, map_location="cpu", weights_only=False)\n'
        + "".join(f'{s} = {loaded}["{s}"]\n' for s in shown)
    )
    before = list(cst.parse_module(text).body)
    before[0] = before[0].with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine(), cst.EmptyLine(comment=cst.Comment("# The notebook reads these after the run: rank 0 hands them back through a file."))])
    return [*before, facts.statements[launch].node, *cst.parse_module(after).body]
