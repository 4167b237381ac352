"""NBR102: `torch.cuda.is_available()` before Lightning is imported."""

from __future__ import annotations

from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule, runs_before_a_launch


class CudaProbeBeforeLightningImport(Rule):
    """
    ## What it does
    Finds `torch.cuda.is_available()` run in the notebook process before the first import of
    Lightning (`lightning`, `pytorch_lightning` or `lightning_fabric`), in a notebook that later
    launches training. Class bodies (a dataclass default) and default arguments count: they run
    when the cell runs.

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
    Safe: the fix imports Lightning (or sets `PYTORCH_NVML_BASED_CUDA_CHECK=1`) before the probe;
    the probe returns the same answer.
    """

    code = "NBR102"
    name = "cuda-probe-before-lightning-import"
    summary = "`torch.cuda.is_available()` runs before Lightning is imported"
    applicability = Applicability.SAFE
    fix_availability = FixAvailability.SOMETIMES
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
    ]

    def check(self, facts):
        first_import = facts.lightning_import
        for probe in facts.cuda_probes:
            if first_import is not None and probe.statement >= first_import:
                continue
            if runs_before_a_launch(facts, probe):
                via = f"`{probe.via}()` calls `torch.cuda.is_available()`, which" if probe.via else "`torch.cuda.is_available()`"
                yield Finding(probe.node, f"{via} runs before Lightning is imported and poisons fork for the training processes; import Lightning first")
