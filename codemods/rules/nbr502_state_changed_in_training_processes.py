"""NBR502: the notebook reads, after a forked launch, what only the training processes changed."""

from __future__ import annotations

from codemods.after_launch import stale_reads
from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule


class StateChangedInTrainingProcesses(Rule):
    """
    ## What it does
    Finds notebook-level objects that code run in the training processes changes (a callback's
    or a LightningModule's methods, `training_step`, a launched Fabric function: `append`,
    `update`, `x[k] = v`, `self.losses = ...`, `global` assignments) and that the notebook reads
    after the forked launch.

    ## Why is this bad?
    A forked process has its own copy of the notebook's memory. When `trainer.fit(...)` with
    `ddp_notebook` returns, the notebook gets back only what Lightning sends from rank 0
    (`lightning/pytorch/strategies/launchers/multiprocessing.py`,
    `_MultiProcessingLauncher._collect_rank_zero_results`): the weights, `trainer.state`,
    `trainer.callback_metrics` and the best checkpoint's path. A list a callback appended to, a
    dict a hook filled, or an attribute set outside `__init__` keeps the value it had before
    the launch: an empty history, a plot with nothing on it, an `IndexError`, with no error from
    the training itself. `fabric.launch(train)` brings back nothing at all.

    ## Example
    ```python
    class History(L.Callback):
        def __init__(self):
            self.losses = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.losses.append(trainer.callback_metrics["train_loss"].item())

    history = History()
    trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook", callbacks=[history])
    trainer.fit(model)
    print(history.losses)  # []
    ```

    ## Use instead
    Hand the values back from rank 0 through a file: a callback whose `teardown` saves them on
    rank 0, loaded after the launch (what the fix writes); or log them (`self.log`) and read
    `trainer.callback_metrics` or the logger's `metrics.csv`. In a launched Fabric function,
    save them on rank 0 (`if fabric.global_rank == 0: torch.save(...)`) and load them after
    `fabric.launch(train)`.

    ## Fix safety
    Unsafe: for a top-level `trainer.fit/validate/test/predict(...)` line, the fix adds a small
    callback that saves the values on rank 0 when the run ends and loads them after it. The
    notebook then holds rank 0's copies, loaded on the CPU: the same values, but new objects
    (other references to the old ones keep the old contents) and tensors moved to the CPU. No
    fix for Fabric functions or for launches inside functions or loops: the message says what
    to do.
    """

    code = "NBR502"
    name = "state-changed-in-training-processes"
    summary = "The notebook reads, after a forked launch, what only the training processes changed"
    applicability = Applicability.UNSAFE
    fix_availability = FixAvailability.SOMETIMES
    context_reason = "not scripts: with `strategy=\"ddp\"` the script's process is rank 0 and trains itself, so what it reads after `fit` is what training left"
    fix_title = "Hand the values back from rank 0"

    VALID = [
        """
import lightning as L
class History(L.Callback):
    def __init__(self):
        self.losses = []
    def on_train_epoch_end(self, trainer, pl_module):
        self.losses.append(1.0)
history = History()
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook", callbacks=[history])
print(history.losses)
trainer.fit(model)
""",
        """
import lightning as L
losses = []
def train(fabric):
    losses = []
    losses.append(1.0)
fabric = L.Fabric(accelerator="cuda", devices=2)
fabric.launch(train)
print(losses)
""",
    ]
    INVALID = [
        Invalid(
            """
import lightning as L
class History(L.Callback):
    def __init__(self):
        self.losses = []
    def on_train_epoch_end(self, trainer, pl_module):
        self.losses.append(trainer.callback_metrics["train_loss"].item())
history = History()
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook", callbacks=[history])
trainer.fit(model)
# %%
print(history.losses)
""",
            at=(2, 1, 7),
            message_contains="on_train_epoch_end",
        ),
        Invalid(
            """
import lightning as L
val_scores = {}
class Lit(L.LightningModule):
    def validation_step(self, batch, batch_idx):
        val_scores[batch_idx] = 1.0
model = Lit()
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
best = max(val_scores.values())
""",
            at=(1, 9, 12),
        ),
        Invalid(
            """
import lightning as L
losses = []
def train(fabric):
    for step in range(10):
        losses.append(step)
fabric = L.Fabric(accelerator="cuda", devices=2)
fabric.launch(train)
print(len(losses))
""",
            at=(1, 8, 11),
            message_contains="launched function `train`",
        ),
    ]

    def check(self, facts):
        for read in stale_reads(facts):
            cell = facts.statements[read.launch].cell + 1
            yield Finding(read.node, (
                f"`{read.shown}` is read after the forked launch in cell {cell}, but only the training processes "
                f"changed it ({read.mutation.where}); the notebook still holds its value from before the launch: "
                f"hand it back from rank 0 through a file, or log it and read `trainer.callback_metrics`"
            ))
