"""NBR501: the logger's version-dependent folder read in the notebook after a forked launch."""

from __future__ import annotations

from codemods.after_launch import logger_reads
from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule


class LoggerVersionAfterLaunch(Rule):
    """
    ## What it does
    Finds reads of a CSV or TensorBoard logger's `log_dir`, `version` or `experiment` (also
    `trainer.log_dir`) in the notebook after a forked `trainer.fit/validate/test/predict`, when
    nothing in the notebook process read them before that launch and the logger's `version` is
    not pinned.

    ## Why is this bad?
    `CSVLogger` and `TensorBoardLogger` choose their version on first use: `version` is
    `_get_next_version()`, one past the highest `version_N` folder on disk, remembered in the
    logger (`lightning/pytorch/loggers/csv_logs.py`, `tensorboard.py`). With `ddp_notebook` the
    first use happens in the training processes, which write to `version_0`; Lightning sends
    back weights, `trainer.state`, `callback_metrics` and the best checkpoint path
    (`_MultiProcessingLauncher._collect_rank_zero_results`), not the logger's version. The
    notebook's logger then picks the next free folder, `version_1`, which does not exist:
    `FileNotFoundError` for `metrics.csv`, or a plot of another run's events.

    ## Example
    ```python
    logger = CSVLogger("logs", name="mnist")
    trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook", logger=logger)
    trainer.fit(model)
    # %%
    metrics = pd.read_csv(f"{trainer.logger.log_dir}/metrics.csv")  # version_1: not there
    ```

    ## Use instead
    ```python
    # Choose the log folder's version before the fork: training writes there, the notebook reads it.
    trainer.logger.version
    trainer.fit(model)
    ```
    or pin it: `CSVLogger("logs", name="mnist", version="run-1")`.

    ## Fix safety
    Safe: the fix reads `<logger>.version` right before the launch statement, in the notebook
    process. The version is the one the first use would have chosen there (nothing runs in
    between); the training processes inherit it with the fork. Offered when the launch is a
    top-level `trainer.fit(...)` line on a Trainer the notebook built before it.
    """

    code = "NBR501"
    name = "logger-version-after-launch"
    summary = "The logger's version folder is read after a forked launch chose it in other processes"
    applicability = Applicability.SAFE
    fix_availability = FixAvailability.SOMETIMES
    context_reason = "not scripts: with `strategy=\"ddp\"` the script's process is rank 0 and trains itself, so what it reads after `fit` is what training left"
    fix_title = "Choose the logger's version before the launch"

    VALID = [
        """
import lightning as L
from lightning.pytorch.loggers import CSVLogger
logger = CSVLogger("logs", version="run-1")
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook", logger=logger)
trainer.fit(model)
print(logger.log_dir)
""",
        """
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.logger.version
trainer.fit(model)
print(trainer.log_dir)
""",
        """
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook", logger=False)
trainer.fit(model)
print(trainer.log_dir)
""",
    ]
    INVALID = [
        Invalid(
            """
import lightning as L
from lightning.pytorch.loggers import CSVLogger
logger = CSVLogger("logs", name="mnist")
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook", logger=logger)
trainer.fit(model)
# %%
path = trainer.logger.log_dir + "/metrics.csv"
""",
            at=(2, 1, 8),
            message_contains="version_1",
        ),
        Invalid(
            """
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
print(trainer.log_dir)
""",
            at=(1, 4, 7),
        ),
        Invalid(
            """
import lightning.pytorch as pl
from lightning.pytorch import loggers
tb = loggers.TensorBoardLogger("tb_logs")
trainer = pl.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook", logger=tb)
trainer.fit(model)
tb.experiment.add_text("note", "done")
""",
            at=(1, 6, 1),
        ),
    ]

    def check(self, facts):
        for read in logger_reads(facts):
            cell = facts.statements[read.launch].cell + 1
            yield Finding(read.node, (
                f"`{facts.module.code_for_node(read.node)}` after the forked launch in cell {cell}: the training "
                f"processes chose the log folder's version, and this process picks the next free one (version_1 "
                f"when training wrote version_0); read `{read.through}.version` before the launch, or pin `version=` on the logger"
            ))
