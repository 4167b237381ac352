"""NBR302: Fabric training at top level."""

from __future__ import annotations

from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule


class TrainingAtTopLevel(Rule):
    """
    ## What it does
    Finds Fabric training that runs in the notebook process: `fabric.setup(...)`,
    `setup_module / setup_optimizers / setup_dataloaders`, `fabric.backward(...)`,
    `clip_gradients`, collectives (`all_reduce`, `barrier`, ...) called at top level, or in a
    notebook function called at top level, instead of inside the function given to
    `fabric.launch`. One finding per statement.

    ## Why is this bad?
    Only the launched function runs in the training processes. Set-up and training at top level run
    once, in the notebook process, on one device: with more than one device Fabric raises
    `RuntimeError: To use Fabric with more than one device, you must call .launch()`, and after a
    launch the notebook's Fabric is not distributed (`Default process group has not been
    initialized`).

    ## Example
    ```python
    fabric = Fabric(accelerator="cuda", devices=2)
    model, optimizer = fabric.setup(model, optimizer)
    for batch in dataloader:
        loss = model(batch).sum()
        fabric.backward(loss)
        optimizer.step()
    ```

    ## Use instead
    ```python
    def train(fabric):
        model, optimizer = fabric.setup(model, optimizer)
        for batch in dataloader:
            ...

    fabric = Fabric(accelerator="cuda", devices=2)
    fabric.launch(train)
    ```

    ## Fix safety
    Safe: the fix wraps the training region into `def train(fabric)`, launches it, and keeps the
    names used after training working (small values are returned, weights are saved by rank 0 and
    loaded back).
    """

    code = "NBR302"
    name = "training-at-top-level"
    summary = "Fabric training runs at top level instead of in the launched function"
    applicability = Applicability.SAFE
    fix_availability = FixAvailability.SOMETIMES
    context_reason = "not scripts: every process `strategy=\"ddp\"` starts runs the script's top level, so training there is distributed"
    fix_title = "Move the training region into `def train(fabric)`"

    VALID = [
        """
import lightning as L

def train(fabric):
    model, optimizer = fabric.setup(model, optimizer)
    fabric.backward(loss)

fabric = L.Fabric(accelerator="cuda", devices=2)
fabric.launch(train)
""",
        # Trainer notebooks have no Fabric training.
        """
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
""",
    ]
    INVALID = [
        Invalid(
            """
import lightning as L
fabric = L.Fabric(accelerator="cuda", devices=2)
fabric.launch()
# %%
model, optimizer = fabric.setup(model, optimizer)
# %%
for batch in loader:
    loss = model(batch).sum()
    fabric.backward(loss)
    optimizer.step()
""",
            at=(2, 1, 20),
            message_contains="fabric.setup",
        ),
    ]

    def check(self, facts):
        seen: set[int] = set()
        for t in facts.training:
            if t.statement in seen:
                continue
            seen.add(t.statement)
            via = f" (through `{t.via}()`)" if t.via else ""
            yield Finding(t.node, f"Fabric training (`{t.what}`){via} runs in the notebook process; move it into `def train(fabric)` and call `fabric.launch(train)`")
