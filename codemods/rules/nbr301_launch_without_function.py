"""NBR301: `fabric.launch()` without a function."""

from __future__ import annotations

import libcst as cst

from codemods import names as N
from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule


class LaunchWithoutFunction(Rule):
    """
    ## What it does
    Finds `fabric.launch()` called with no function, or with the result of calling one
    (`fabric.launch(train())`).

    ## Why is this bad?
    In a script, `fabric.launch()` re-runs the script in each process. A notebook cannot be re-run,
    so with `ddp_notebook` Lightning raises `TypeError: To spawn processes with the DDPStrategy
    strategy, .launch() needs to be called with a function that contains the code to launch in
    processes`. The training code after it never runs on more than one device.

    ## Example
    ```python
    fabric = Fabric(accelerator="cuda", devices=2)
    fabric.launch()
    model, optimizer = fabric.setup(model, optimizer)
    ...
    ```

    ## Use instead
    ```python
    def train(fabric):
        model, optimizer = fabric.setup(model, optimizer)
        ...

    fabric = Fabric(accelerator="cuda", devices=2)
    fabric.launch(train)
    ```

    ## Fix safety
    Safe: the fix wraps the training region after the launch into `def train(fabric)` and passes it
    to `fabric.launch`; names used after training keep working.
    """

    code = "NBR301"
    name = "launch-without-function"
    summary = "`fabric.launch()` is called without a function"
    applicability = Applicability.SAFE
    fix_availability = FixAvailability.SOMETIMES
    context_reason = "not scripts: there `fabric.launch()` without a function is right, the processes it starts re-run the script"
    fix_title = "Wrap the training code into `def train(fabric)` and call `fabric.launch(train)`"

    VALID = [
        """
import lightning as L

def train(fabric):
    ...

fabric = L.Fabric(accelerator="cuda", devices=2)
fabric.launch(train)
""",
    ]
    INVALID = [
        Invalid(
            """
import lightning as L
fabric = L.Fabric(accelerator="cuda", devices=2)
# %%
fabric.launch()
model, optimizer = fabric.setup(model, optimizer)
""",
            at=(2, 1, 1),
        ),
        Invalid(
            """
from lightning.fabric import Fabric
fabric = Fabric(devices=2)
fabric.launch(train())
""",
            at=(1, 3, 1),
            message_contains="result",
        ),
        Invalid(  # a kernel runs a `__main__` guard's body: it is top-level code
            """
import lightning as L
if __name__ == "__main__":
    fabric = L.Fabric(accelerator="cuda", devices=2)
    fabric.launch()
""",
            at=(1, 4, 5),
        ),
    ]

    def check(self, facts):
        for lp in facts.launches:
            if lp.kind != "fabric.launch":
                continue
            call = lp.inner or lp.node
            fn = N.call_arg(call, "function", 0)
            if fn is None:
                yield Finding(call, "`fabric.launch()` without a function cannot start processes from a notebook; pass the training function: `fabric.launch(train)`")
            elif isinstance(fn.value, cst.Call):
                name = N.dotted(fn.value.func) or "..."
                yield Finding(call, f"`fabric.launch()` is given the result of `{name}()`, which runs in the notebook process; pass the function itself: `fabric.launch({name})`")
