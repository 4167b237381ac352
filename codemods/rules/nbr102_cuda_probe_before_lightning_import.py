"""NBR102: `torch.cuda.is_available()` before Lightning is imported."""

from __future__ import annotations

from codemods.facts import lightning_import
from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule, runs_before_a_launch


class CudaProbeBeforeLightningImport(Rule):
    """
    ## What it does
    Finds `torch.cuda.is_available()` run in the notebook process before the first import of
    Lightning (`lightning`, `pytorch_lightning` or `lightning_fabric`), in a notebook that later
    launches training. Class bodies (a dataclass default) and default arguments count: they run
    when the cell runs.

    In a notebook that does not use Lightning (Accelerate's `notebook_launcher`), the probe is
    reported unless `PYTORCH_NVML_BASED_CUDA_CHECK=1` is set before it: nothing there sets it
    (Accelerate only sets it for its own checks, `accelerate/utils/imports.py`).

    ## Why is this bad?
    Without `PYTORCH_NVML_BASED_CUDA_CHECK=1`, `torch.cuda.is_available()` asks the CUDA runtime for
    the device count, which registers torch's fork handler: the process is "poisoned" even though
    `torch.cuda.is_initialized()` stays `False`, and forked training processes fail with `Cannot
    re-initialize CUDA in forked subprocess`. Importing Lightning sets the variable, after which the
    same call uses NVML and is harmless. Import order decides.

    ## Example
    ```python
    import torch
    use_gpu = torch.cuda.is_available()
    import lightning as L
    ```

    ## Use instead
    ```python
    import lightning as L  # sets PYTORCH_NVML_BASED_CUDA_CHECK=1
    import torch
    use_gpu = torch.cuda.is_available()
    ```

    ## Fix safety
    Safe: the fix imports Lightning before the probe (or, where the notebook does not import
    Lightning, sets `os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"` before it: torch reads the
    variable at each call); the probe returns the same answer.
    """

    code = "NBR102"
    name = "cuda-probe-before-lightning-import"
    summary = "`torch.cuda.is_available()` runs before Lightning is imported"
    applicability = Applicability.SAFE
    fix_availability = FixAvailability.SOMETIMES
    contexts = ("notebook", "script")
    context_reason = "in a script only when the script forks (`ddp_notebook`, `ddp_fork`, `notebook_launcher`): `strategy=\"ddp\"` starts fresh processes"
    fix_title = "Import Lightning before the CUDA probe"

    VALID = [
        """
import lightning as L
import torch
use_gpu = torch.cuda.is_available()
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
""",
        """
import os
os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
import torch
use_gpu = torch.cuda.is_available()
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
""",
        # No launch: nothing forks.
        """
import torch
print(torch.cuda.is_available())
""",
        # Accelerate notebook with the NVML check set first.
        """
import os
os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
import torch
from accelerate import notebook_launcher
print(torch.cuda.is_available())
notebook_launcher(training_function, num_processes=2)
""",
    ]
    INVALID = [
        Invalid(
            """
import torch
print(torch.cuda.is_available())
# %%
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
""",
            at=(1, 2, 7),
        ),
        Invalid(
            """
import torch
from dataclasses import dataclass

@dataclass
class Config:
    use_gpu: bool = torch.cuda.is_available()
# %%
from pytorch_lightning import Trainer
trainer = Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
""",
            at=(1, 6, 21),
        ),
        # An Accelerate notebook: no Lightning to import.
        Invalid(
            """
import torch
device = "cuda" if torch.cuda.is_available() else "cpu"
# %%
from accelerate import notebook_launcher
notebook_launcher(training_function, num_processes=2)
""",
            at=(1, 2, 20),
            message_contains="PYTORCH_NVML_BASED_CUDA_CHECK",
        ),
    ]

    def check(self, facts):
        if not self.forks_here(facts):
            return
        first_import = facts.lightning_import
        lightning = uses_lightning(facts)
        for probe in facts.cuda_probes:
            if first_import is not None and probe.statement >= first_import:
                continue
            if runs_before_a_launch(facts, probe):
                via = f"`{probe.via}()` calls `torch.cuda.is_available()`, which" if probe.via else "`torch.cuda.is_available()`"
                if lightning:
                    yield Finding(probe.node, f"{via} runs before Lightning is imported and poisons fork for the training processes; import Lightning first")
                else:
                    yield Finding(probe.node, f"{via} runs without the NVML-based check and poisons fork for the training processes; set `os.environ[\"PYTORCH_NVML_BASED_CUDA_CHECK\"] = \"1\"` in the first cell, before importing torch, or move the probe into the training function")


def uses_lightning(facts) -> bool:
    """Does the notebook import Lightning at top level, or launch with it? (An Accelerate notebook
    does neither: telling it to import Lightning would be odd advice.)"""
    return lightning_import(facts) is not None or any(lp.kind != "notebook_launcher" for lp in facts.launches)
