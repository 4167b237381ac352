"""NBR504: Lightning state that a forked launch leaves in the training processes, read afterwards."""

from __future__ import annotations

from codemods.after_launch import lightning_state_reads
from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule


class LightningStateAfterLaunch(Rule):
    """
    ## What it does
    Finds reads, after a forked `trainer.fit/validate/test/predict`, of Trainer and callback state
    that Lightning does not send back to the notebook: `trainer.current_epoch`,
    `trainer.global_step`, `trainer.logged_metrics`, `trainer.progress_bar_metrics`; a
    `ModelCheckpoint`'s `best_model_score`, `best_k_models`, `kth_best_model_path`, `kth_value`,
    `last_model_path`, `current_score`; an `EarlyStopping`'s `stopped_epoch`, `best_score`,
    `wait_count` (through a variable or `trainer.checkpoint_callback` /
    `trainer.early_stopping_callback`).

    ## Why is this bad?
    `_MultiProcessingLauncher._collect_rank_zero_results`
    (`lightning/pytorch/strategies/launchers/multiprocessing.py`) sends back from rank 0 only the
    best checkpoint's path, the weights, `trainer.state` and `callback_metrics`;
    `_recover_results_in_main_process` restores those and nothing else. On 2 forked processes
    (Lightning 2.6) after a 3-epoch fit, the notebook reads `current_epoch` 0, `global_step` 0,
    `logged_metrics` {}, `best_model_score` None, `last_model_path` "", `best_k_models` {} and
    `EarlyStopping.best_score` inf, where one process reads 3, 12, the metrics, the score and
    the paths.

    ## Example
    ```python
    checkpoint = ModelCheckpoint(monitor="val_loss")
    trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook", callbacks=[checkpoint])
    trainer.fit(model)
    print(f"best val_loss {checkpoint.best_model_score:.3f}")  # None: TypeError
    ```

    ## Use instead
    Read what comes back: `trainer.callback_metrics` for the last logged values,
    `checkpoint.best_model_path` for the best checkpoint (load it for its score), or hand the
    values back from rank 0 (what the fix writes for callback attributes).

    ## Fix safety
    Unsafe, and only for callback attributes read after a top-level launch line: the fix adds a
    small callback that saves them on rank 0 when the run ends and sets them again in the notebook
    after it (copies, loaded on the CPU). `trainer.current_epoch` and the other Trainer properties
    cannot be set: no fix, the message names what to read instead.
    """

    code = "NBR504"
    name = "lightning-state-after-launch"
    summary = "Trainer or callback state that a forked launch does not bring back is read after it"
    applicability = Applicability.UNSAFE
    fix_availability = FixAvailability.SOMETIMES
    context_reason = "not scripts: with `strategy=\"ddp\"` the script's process is rank 0 and trains itself, so what it reads after `fit` is what training left"
    fix_title = "Hand the values back from rank 0"

    VALID = [
        """
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
checkpoint = ModelCheckpoint(monitor="val_loss")
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook", callbacks=[checkpoint])
trainer.fit(model)
print(checkpoint.best_model_path, trainer.callback_metrics["val_loss"])
""",
        """
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
print(trainer.current_epoch)
trainer.fit(model)
""",
    ]
    INVALID = [
        Invalid(
            """
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
checkpoint = ModelCheckpoint(monitor="val_loss")
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook", callbacks=[checkpoint])
trainer.fit(model)
# %%
print(checkpoint.best_model_score)
""",
            at=(2, 1, 7),
            message_contains="best_model_score",
        ),
        Invalid(
            """
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
print("epochs", trainer.current_epoch)
""",
            at=(1, 4, 17),
            message_contains="callback_metrics",
        ),
        Invalid(
            """
import pytorch_lightning as pl
trainer = pl.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook", callbacks=[pl.callbacks.EarlyStopping("val_loss")])
trainer.fit(model)
print(trainer.early_stopping_callback.stopped_epoch)
""",
            at=(1, 4, 7),
        ),
    ]

    def check(self, facts):
        for read in lightning_state_reads(facts):
            cell = facts.statements[read.launch].cell + 1
            instead = "hand it back from rank 0" if read.assignable else "read `trainer.callback_metrics` (it comes back) or log the value"
            yield Finding(read.node, (
                f"`{read.shown}` is read after the forked launch in cell {cell}; Lightning brings back only the weights, "
                f"`trainer.state`, `callback_metrics` and the best checkpoint's path, so here it still holds its value "
                f"from before training: {instead}"
            ))
