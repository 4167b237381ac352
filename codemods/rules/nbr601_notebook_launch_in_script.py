"""NBR601: a notebook-only launch (a fork-based strategy, `notebook_launcher`) in a script."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from codemods import names as N
from codemods.facts import ConstructorCall, NotebookFacts
from codemods.rules.base import (
    Applicability,
    Finding,
    FixAvailability,
    Invalid,
    Rule,
    Valid,
)

# Fork-based strategies and what a script uses instead (Lightning's subprocess launcher).
SCRIPT_EQUIVALENT = {
    "ddp_notebook": "ddp",
    "ddp_fork": "ddp",
    "ddp_notebook_find_unused_parameters_true": "ddp_find_unused_parameters_true",
    "ddp_notebook_find_unused_parameters_false": "ddp_find_unused_parameters_false",
    "ddp_fork_find_unused_parameters_true": "ddp_find_unused_parameters_true",
    "ddp_fork_find_unused_parameters_false": "ddp_find_unused_parameters_false",
}


def forking_strategies(facts: NotebookFacts) -> Iterator[tuple[ConstructorCall, cst.Arg, str]]:
    """(constructor, its `strategy` argument, the strategy) for every Trainer/Fabric made with a
    fork-based strategy named by a plain string."""
    for c in facts.constructors:
        if c.kind not in ("trainer", "fabric"):
            continue
        arg = N.call_arg(c.node, "strategy", 1 if c.kind == "fabric" else None)
        if arg is None or not isinstance(arg.value, cst.SimpleString):
            continue
        strategy = N.string_value(arg.value)
        if strategy in SCRIPT_EQUIVALENT:
            yield c, arg, strategy


def forking_ddp_strategies(facts: NotebookFacts) -> Iterator[cst.Call]:
    """`DDPStrategy(start_method="fork")` calls."""
    for c in facts.constructors:
        start = N.call_arg(c.node, "start_method") if c.kind == "ddp_strategy" else None
        if start is not None and N.string_value(start.value) == "fork":
            yield c.node


def notebook_launchers(facts: NotebookFacts) -> list[cst.Call]:
    return [lp.inner or lp.node for lp in facts.launches if lp.kind == "notebook_launcher"]


def script_forks(facts: NotebookFacts) -> bool:
    """Does a script fork its training processes (and so meet the notebook's fork hazards)?"""
    return any(forking_strategies(facts)) or any(forking_ddp_strategies(facts)) or bool(notebook_launchers(facts))


class NotebookLaunchInScript(Rule):
    """
    ## What it does
    Finds, in a plain Python script, `Trainer(strategy=...)` or `Fabric(strategy=...)` with a
    fork-based strategy (`"ddp_notebook"`, `"ddp_fork"` and their `find_unused_parameters`
    variants), `DDPStrategy(start_method="fork")`, and Accelerate's `notebook_launcher(...)`.

    ## Why is this bad?
    These launchers exist for notebooks, which cannot be re-run as a script. They fork the
    training processes from the running process: anything that touched CUDA before the launch
    (a probe, a `.cuda()`, a library import) breaks every child, and they run on one node only.
    A script can do better: with `strategy="ddp"` Lightning starts each process afresh by
    re-running the script, and `accelerate launch script.py` does the same for Accelerate.

    ## Example
    ```python
    trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
    ```

    ## Use instead
    ```python
    trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp")
    ```

    ## Fix safety
    Safe for the strategy names: `ddp` trains the same way as `ddp_notebook`, in processes started
    afresh. No fix for `DDPStrategy(start_method="fork")` and `notebook_launcher(...)`: call the
    training function directly and run the script with `accelerate launch`.
    """

    code = "NBR601"
    name = "notebook-launch-in-script"
    summary = "A script forks its training processes the way a notebook must (`ddp_notebook`, `notebook_launcher`)"
    applicability = Applicability.SAFE
    fix_availability = FixAvailability.SOMETIMES
    context_reason = "not notebooks: a notebook cannot be re-run as a script, forking is right there (NBR401)"
    fix_title = "Use `strategy=\"ddp\"`"
    contexts = ("script",)

    VALID = [
        Valid("""
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp")
trainer.fit(model)
""", context="script"),
        Valid("""
import lightning as L
fabric = L.Fabric(accelerator="cuda", devices=2, strategy="ddp")
fabric.launch()
""", context="script"),
    ]
    INVALID = [
        Invalid(
            """
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
""",
            at=(1, 2, 61),
            message_contains="strategy='ddp'",
            context="script",
        ),
        Invalid(
            """
from accelerate import notebook_launcher

def training_function():
    pass

notebook_launcher(training_function, num_processes=2)
""",
            at=(1, 6, 1),
            message_contains="accelerate launch",
            context="script",
        ),
    ]

    def check(self, facts):
        for c, arg, strategy in forking_strategies(facts):
            owner = "Trainer" if c.kind == "trainer" else "Fabric"
            yield Finding(arg.value, f"`{owner}(strategy={strategy!r})` forks from this script's process, which may have touched CUDA, and runs on one node only; use `strategy={SCRIPT_EQUIVALENT[strategy]!r}`: Lightning starts the processes afresh from a script")
        for call in forking_ddp_strategies(facts):
            yield Finding(call, "`DDPStrategy(start_method=\"fork\")` forks from this script's process, which may have touched CUDA; drop `start_method` so Lightning starts the processes afresh")
        for call in notebook_launchers(facts):
            yield Finding(call, "`notebook_launcher(...)` forks from this script's process and runs on one node only; call the training function directly and run the script with `accelerate launch`")
