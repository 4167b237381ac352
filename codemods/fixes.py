"""The fixes, declared in the order they are tried, and the loop that applies them through the gate.

Each `Fix` names the rules it answers, whether it is unsafe (needs `--unsafe-fixes`), and a
function from the notebook's facts to an `Edit`. One pass applies the first fix that changes the
module; the next pass analyses the result afresh, so every fix works on facts that describe the
module it edits. Before a fix is taken, the semantic gate (`codemods.gate`) compares the module
before and after it: a fix that leaves a name unbound where the kernel reads it is refused, with a
note naming the cell, line and name, and the other fixes still get their turn (the refused one is
tried again once another fix has changed the notebook).

The order: a `__main__` guard around code another fix rewrites is unwrapped first; then one-call
rewrites (strategy, devices, checkpoints and `.cuda()` around a Trainer, the import order), then
the structural ones (the Fabric training region, CUDA into `on_fit_start`,
data into the dataloader hooks).

A fix belongs to a context (`Fix.contexts`, notebooks by default): a plain script (`Options.context
== "script"`) gets only the fixes for scripts (NBR601 `ddp`, NBR603 the `__main__` guard), and a
notebook never gets those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import libcst as cst

from codemods import gate, local_fixes
from codemods.cells import BodyPlan, cell_after, rebuild
from codemods.facts import NotebookFacts, analyse
from codemods.kept import module_code
from codemods.tuner import tuner_fix

@dataclass(frozen=True)
class Options:
    unsafe_fixes: bool = False
    devices: int | None = None
    enabled: Callable[[str], bool] = lambda code: True  # the rule selection
    only: frozenset[str] | None = None  # these fixes (by name) and no others
    context: str = "notebook"  # "script": a plain `.py` file; only the fixes for its context run


@dataclass
class Edit:
    """What one fix does: nodes replaced, top-level statements moved (a plan), or a whole new
    module; the changes it reports as (code, where, message); what it refused to do."""

    changes: list[tuple[str, object, str]] = field(default_factory=list)  # where: a cell index or a node
    replacements: dict[int, cst.CSTNode] = field(default_factory=dict)
    plan: BodyPlan | None = None
    module: cst.Module | None = None
    refused: list[str] = field(default_factory=list)

    def apply(self, module: cst.Module) -> cst.Module:
        if self.module is not None:
            return self.module
        new = local_fixes.apply_replacements(module, self.replacements)
        return rebuild(new, self.plan) if self.plan else new


@dataclass(frozen=True)
class Fix:
    name: str
    codes: tuple[str, ...]  # the rules whose findings it fixes
    unsafe: bool  # only with --unsafe-fixes
    run: Callable[[NotebookFacts, Options], Edit]
    needs_devices: bool = False  # only with --devices N
    contexts: tuple[str, ...] = ("notebook",)  # where the fix applies (a notebook fix never edits a script)

    def wanted(self, options: Options) -> bool:
        return (
            options.context in self.contexts
            and (options.unsafe_fixes or not self.unsafe)
            and (options.devices is not None or not self.needs_devices)
            and any(options.enabled(code) for code in self.codes)
            and (options.only is None or self.name in options.only)
        )


# ---------------------------------------------------------------------------------------------
# The fixes


def _main_guard(facts: NotebookFacts, options: Options) -> Edit:
    from codemods.main_guard import unwrap_main_guard

    plan, changes, refused = unwrap_main_guard(facts)
    return Edit(changes, plan=plan, refused=refused)


def _logger_version(facts: NotebookFacts, options: Options) -> Edit:
    from codemods.hand_back import choose_logger_version

    plan, changes = choose_logger_version(facts)
    return Edit(changes, plan=plan)


def _hand_back(facts: NotebookFacts, options: Options) -> Edit:
    from codemods.hand_back import hand_back_state

    plan, changes = hand_back_state(facts)
    return Edit(changes, plan=plan)


def _strategies(facts: NotebookFacts, options: Options) -> Edit:
    replacements, changes = local_fixes.notebook_strategies(facts)
    return Edit(changes, replacements)


def _script_strategies(facts: NotebookFacts, options: Options) -> Edit:
    replacements, changes = local_fixes.script_strategies(facts)
    return Edit(changes, replacements)


def _script_main_guard(facts: NotebookFacts, options: Options) -> Edit:
    plan, changes = local_fixes.script_main_guard(facts)
    return Edit(changes, plan=plan)


def _devices(facts: NotebookFacts, options: Options) -> Edit:
    replacements, changes = local_fixes.explicit_devices(facts, options.devices)
    return Edit(changes, replacements)


def _num_processes(facts: NotebookFacts, options: Options) -> Edit:
    changes, replacements = local_fixes.explicit_num_processes(facts, options.devices)
    return Edit(changes, replacements)


def _cuda_around_fit(facts: NotebookFacts, options: Options) -> Edit:
    plan, replacements, changes = local_fixes.cuda_before_fit(facts)
    return Edit(changes, replacements, plan)


def _import_before_probe(facts: NotebookFacts, options: Options) -> Edit:
    plan, changes = local_fixes.lightning_before_probe(facts)
    return Edit(changes, plan=plan)


def _wrap_training(facts: NotebookFacts, options: Options) -> Edit:
    from codemods.wrap_training import wrap_training

    outcome = wrap_training(facts, allow_unsafe=options.unsafe_fixes)
    module = outcome.module if outcome.module is not facts.module else None
    return Edit(list(outcome.changes), module=module, refused=list(outcome.refused))


def _wrap_accelerate(facts: NotebookFacts, options: Options) -> Edit:
    from codemods.wrap_training import wrap_accelerate

    outcome = wrap_accelerate(facts, allow_unsafe=options.unsafe_fixes, devices=options.devices)
    module = outcome.module if outcome.module is not facts.module else None
    return Edit(list(outcome.changes), module=module, refused=list(outcome.refused))


def _accelerator_inside(facts: NotebookFacts, options: Options) -> Edit:
    from codemods.accelerator_inside import accelerator_into_function

    plan, changes, refused = accelerator_into_function(facts)
    return Edit(changes, plan=plan, refused=refused)


def _cuda_into_on_fit_start(facts: NotebookFacts, options: Options) -> Edit:
    plan, changes = local_fixes.cuda_into_on_fit_start(facts)
    return Edit(changes, plan=plan)


def _data_into_hooks(facts: NotebookFacts, options: Options) -> Edit:
    from codemods.data_into_hooks import data_into_hooks

    hooks = data_into_hooks(facts, allow_unsafe=options.unsafe_fixes)
    return Edit(list(hooks.changes), hooks.replacements, hooks.plan, refused=list(hooks.refused))


FIXES: tuple[Fix, ...] = (
    Fix("unwrap the __main__ guard", ("NBR101", "NBR201", "NBR301", "NBR302"), unsafe=False, run=_main_guard),
    Fix("notebook strategy", ("NBR401",), unsafe=False, run=_strategies),
    Fix("explicit devices", ("NBR402",), unsafe=False, run=_devices, needs_devices=True),
    Fix("explicit num_processes", ("NBR403",), unsafe=False, run=_num_processes, needs_devices=True),
    Fix("CUDA around fit", ("NBR101",), unsafe=True, run=_cuda_around_fit),
    Fix("Lightning before the CUDA probe", ("NBR102",), unsafe=False, run=_import_before_probe),
    Fix("training into train(fabric)", ("NBR301", "NBR302", "NBR201", "NBR101"), unsafe=False, run=_wrap_training),
    Fix("Accelerate training into training_function()", ("NBR305", "NBR103", "NBR101"), unsafe=False, run=_wrap_accelerate, needs_devices=True),
    Fix("Accelerator into the launched function", ("NBR103",), unsafe=False, run=_accelerator_inside),
    Fix("CUDA into on_fit_start", ("NBR101",), unsafe=True, run=_cuda_into_on_fit_start),
    Fix("data into the dataloader hooks", ("NBR201",), unsafe=False, run=_data_into_hooks),
    Fix("logger version before the launch", ("NBR501",), unsafe=False, run=_logger_version),
    Fix("state handed back from rank 0", ("NBR502", "NBR504"), unsafe=True, run=_hand_back),
    Fix("tuning on one CPU process", ("NBR503",), unsafe=True, run=tuner_fix),
    Fix("script strategy", ("NBR601",), unsafe=False, run=_script_strategies, contexts=("script",)),
    Fix("script __main__ guard", ("NBR603",), unsafe=False, run=_script_main_guard, contexts=("script",)),
)


# ---------------------------------------------------------------------------------------------
# One pass


@dataclass
class Step:
    fix: Fix
    module: cst.Module  # the module after the fix
    changes: list[tuple[str, object, str]]
    code: str = ""  # `module.code` (printed once here; printing a large module is not cheap)


def next_step(facts: NotebookFacts, options: Options, refused: list[str]) -> Step | None:
    """The first fix (in the stated order) that changes the module and passes the gate; what was
    refused on the way is appended to `refused`. A fix the gate refuses is tried again in the next
    pass: a fix taken after it may have made it sound."""
    module = facts.module
    for fix in FIXES:
        if not fix.wanted(options):
            continue
        edit = fix.run(facts, options)
        refused.extend(edit.refused)
        new = edit.apply(module)
        if new is module:
            continue
        new_code = module_code(new)  # the statements no fix changed are not printed again
        if new_code == facts.code:
            continue
        broken = gate.new_unbound(facts.code, new_code)
        if broken:
            refused.append(_gate_note(fix, new_code, broken))
            continue
        return Step(fix, new, edit.changes, new_code)
    return None


def _gate_note(fix: Fix, code: str, broken: list[gate.Unbound]) -> str:
    first = broken[0]
    cell, row = locate(code, first.line)
    more = f" (and {len(broken) - 1} more name{'s' * (len(broken) > 2)})" if len(broken) > 1 else ""
    return (f"not rewritten ({fix.codes[0]}, {fix.name}): afterwards {first.describe()} "
            f"(cell {cell}, line {row}){more}; the notebook is left as it was for this fix")


def locate(code: str, line: int) -> tuple[int, int]:
    """Module line -> (1-based cell number, 1-based row in the cell), from the module's own cell
    markers (nbrefactor's numbered ones, or jupytext's `# %%`)."""
    cell, start = -1, 0
    plain = "# %% nbrefactor-cell " not in code
    for number, text in enumerate(code.split("\n")[:line], start=1):
        after = cell_after(text, cell, plain)
        if after != cell:
            cell, start = after, number
    return max(cell, 0) + 1, line - start


def fix_module(module: cst.Module, options: Options, max_passes: int = 12) -> Iterator[Step]:
    """Every step, pass after pass, until no fix changes the module (the libcst commands' loop;
    `nbrefactor fix` runs the same steps through `next_step`, writing cells between passes)."""
    refused: list[str] = []
    for _ in range(max_passes):
        step = next_step(analyse(module), options, refused)
        if step is None:
            return
        yield step
        module = cst.parse_module(step.code)
