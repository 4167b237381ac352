"""NBR401: a strategy or start method that cannot fork from a notebook."""

from __future__ import annotations

import libcst as cst

from codemods import names as N
from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule

# Strategy names and what to use in a notebook instead (None: no fork-based equivalent).
NOTEBOOK_EQUIVALENT = {
    "ddp": "ddp_notebook",
    "ddp_spawn": "ddp_notebook",
    "ddp_find_unused_parameters_true": "ddp_notebook_find_unused_parameters_true",
    "ddp_find_unused_parameters_false": "ddp_notebook_find_unused_parameters_false",
    "ddp_spawn_find_unused_parameters_true": "ddp_notebook_find_unused_parameters_true",
    "ddp_spawn_find_unused_parameters_false": "ddp_notebook_find_unused_parameters_false",
    "fsdp": None,
    "deepspeed": None,
}


def notebook_strategy(strategy: str) -> str | None:
    """The fork-based strategy to use in a notebook instead of `strategy`, if there is one."""
    if strategy.startswith("deepspeed") or strategy.startswith("fsdp"):
        return None
    return NOTEBOOK_EQUIVALENT.get(strategy, "ddp_notebook")


class StrategyNotNotebookCompatible(Rule):
    """
    ## What it does
    Finds `Trainer(strategy=...)` and `Fabric(strategy=...)` with a strategy that does not fork
    (`"ddp"`, `"ddp_spawn"` and their `find_unused_parameters` variants, `"fsdp"`, `"deepspeed"`),
    `DDPStrategy(...)` without `start_method="fork"`, and `set_start_method("spawn")` or
    `"forkserver"` in a notebook that launches training.

    ## Why is this bad?
    In an interactive session Lightning refuses these strategies: `Trainer(strategy='ddp')` "is not
    compatible with an interactive environment". `ddp` re-runs a script that a notebook does not
    have, and `ddp_spawn` must pickle functions and classes defined in the notebook, which it cannot
    import. Only the fork start method (`ddp_notebook`) works from a notebook. FSDP and DeepSpeed
    have no fork-based variant.

    ## Example
    ```python
    trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp")
    ```

    ## Use instead
    ```python
    trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
    ```

    ## Fix safety
    Safe for the DDP names: the fix replaces them with the fork-based `ddp_notebook` equivalent,
    which trains the same way. No fix for FSDP and DeepSpeed, which must run as a script.
    """

    code = "NBR401"
    name = "strategy-not-notebook-compatible"
    summary = "The strategy or start method cannot fork from a notebook"
    applicability = Applicability.SAFE
    fix_availability = FixAvailability.SOMETIMES
    context_reason = "not scripts: `ddp` is the right strategy there (the reverse, `ddp_notebook` in a script, is NBR601)"
    fix_title = "Use `strategy=\"ddp_notebook\"`"

    VALID = [
        """
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
fabric = L.Fabric(accelerator="cuda", devices=2, strategy="ddp_fork")
""",
        """
from lightning.pytorch.strategies import DDPStrategy
import lightning as L
trainer = L.Trainer(devices=2, strategy=DDPStrategy(start_method="fork", find_unused_parameters=True))
""",
    ]
    INVALID = [
        Invalid(
            """
import lightning as L
trainer = L.Trainer(accelerator="gpu", devices=2, strategy="ddp")
""",
            at=(1, 2, 60),
            message_contains="ddp_notebook",
        ),
        Invalid(
            """
from lightning.pytorch.strategies import DDPStrategy
from pytorch_lightning import Trainer
trainer = Trainer(devices=2, strategy=DDPStrategy(find_unused_parameters=True))
""",
            at=(1, 3, 39),
            message_contains="start_method",
        ),
        Invalid(
            """
import torch.multiprocessing as mp
import lightning as L
mp.set_start_method("spawn")
trainer = L.Trainer(accelerator="gpu", devices=2, strategy="ddp_notebook")
trainer.fit(model)
""",
            at=(1, 3, 1),
        ),
    ]

    def check(self, facts):
        for c in facts.constructors:
            if c.kind == "ddp_strategy":
                start = N.call_arg(c.node, "start_method")
                value = N.string_value(start.value) if start is not None else "popen"
                if value not in ("fork", None):
                    yield Finding(c.node, f"`DDPStrategy` with start method {value!r} cannot run from a notebook; pass `start_method=\"fork\"`")
                continue
            arg = N.call_arg(c.node, "strategy", 1 if c.kind == "fabric" else None)
            if arg is None:
                continue
            strategy = N.string_value(arg.value)
            if strategy is None or isinstance(arg.value, cst.FormattedString):
                continue
            if strategy in NOTEBOOK_EQUIVALENT or strategy.startswith(("deepspeed", "fsdp")):
                alternative = notebook_strategy(strategy)
                owner = "Trainer" if c.kind == "trainer" else "Fabric"
                if alternative:
                    yield Finding(arg.value, f"`{owner}(strategy={strategy!r})` cannot run from a notebook; use `strategy={alternative!r}` (fork)")
                else:
                    yield Finding(arg.value, f"`{owner}(strategy={strategy!r})` has no fork-based variant and cannot run multi-GPU from a notebook; run it as a script, or use `ddp_notebook`")
        if facts.launches:
            for call, method in facts.start_methods:
                yield Finding(call, f"`set_start_method({method!r})` in a notebook: Lightning forks (`ddp_notebook`), and children of another start method cannot import notebook code")
