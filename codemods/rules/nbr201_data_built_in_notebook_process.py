"""NBR201: a Dataset or DataLoader built in the notebook process and handed to training."""

from __future__ import annotations

import bisect

from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule

# Accelerate: data handed to the launched function through `args=`, and a loader it reads as a global.
_ACCELERATE_EXAMPLE = """
import torch
from torch.utils.data import DataLoader, TensorDataset
from accelerate import Accelerator, notebook_launcher
train_ds = TensorDataset(torch.randn(64, 4))
eval_loader = DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=8)
# %%
def training_function(train_ds):
    accelerator = Accelerator()
    loader = accelerator.prepare(DataLoader(train_ds, batch_size=8))
    for batch in eval_loader:
        ...

notebook_launcher(training_function, args=(train_ds,), num_processes=2)
"""


class DataBuiltInNotebookProcess(Rule):
    """
    ## What it does
    Finds a Dataset or DataLoader built at top level (torchvision, torchaudio, torchtext and
    torch_geometric datasets, `TensorDataset`, `random_split`, `Subset`, HF `load_dataset`, your own
    `Dataset` subclasses, `DataLoader`) that reaches training: passed to
    `trainer.fit/validate/test/predict`, read by the function given to `fabric.launch` or
    `notebook_launcher`, or iterated by Fabric training at top level. Datasets that only feed such a
    loader are reported too. A `LightningDataModule` is lazy and fine, unless its `setup()` or
    `prepare_data()` is called at top level before training.

    ## Why is this bad?
    The training processes are forked from the notebook process and inherit the data it built:
    open files, thread pools, pinned or CUDA memory. Lightning's docs list slowdowns and crashes
    (segmentation faults) from data loaded before the launch. Building the data inside the launched
    function or the `*_dataloader` hooks gives each process its own.

    ## Example
    ```python
    dataset = MyDataset("data/")
    dataloader = torch.utils.data.DataLoader(dataset)

    trainer = L.Trainer(accelerator="cuda", devices=2)
    trainer.fit(model, dataloader)
    ```

    ## Use instead
    ```python
    class LitModel(L.LightningModule):
        def train_dataloader(self):
            dataset = MyDataset("data/")
            return torch.utils.data.DataLoader(dataset)
    ```

    ## Fix safety
    Unsafe: the fix moves the data building into the launched function or hooks, so it runs in each
    training process; names that exploration cells read keep working through a top-level factory.
    """

    code = "NBR201"
    name = "data-built-in-notebook-process"
    summary = "A Dataset or DataLoader is built in the notebook process and handed to training"
    applicability = Applicability.UNSAFE
    fix_availability = FixAvailability.SOMETIMES
    context_reason = "not scripts: the processes `strategy=\"ddp\"` starts re-run the script and build their data themselves"
    fix_title = "Build the data inside the launched function or the dataloader hooks"

    VALID = [
        """
import torch
import lightning as L

def train(fabric):
    dataset = torch.utils.data.TensorDataset(torch.randn(8, 2))
    loader = fabric.setup_dataloaders(torch.utils.data.DataLoader(dataset))

fabric = L.Fabric(accelerator="cuda", devices=2)
fabric.launch(train)
""",
        # Exploration only: the dataset never reaches training.
        """
import torchvision
import lightning as L
preview = torchvision.datasets.MNIST(".", download=True)
print(preview[0])
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
""",
        # A DataModule is lazy.
        """
import lightning as L
dm = MyDataModule(batch_size=32)
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model, datamodule=dm)
""",
    ]
    VALID.append(
        # The DataModule that was set up is not the one handed to training.
        """
import lightning as L
dm = MyDataModule()
dm.setup()
print(dm.num_classes)
dm = MyDataModule()
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model, datamodule=dm)
"""
    )
    INVALID = [
        Invalid(
            """
import torch
from torch.utils.data import DataLoader, TensorDataset
import lightning as L
# %%
dataset = TensorDataset(torch.randn(64, 4))
loader = DataLoader(dataset, batch_size=8)
# %%
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model, loader)
""",
            at=(2, 1, 11),
            message_contains="TensorDataset",
        ),
        Invalid(
            """
import torch
import lightning as L
loader = torch.utils.data.DataLoader(ds)

def train(fabric):
    for batch in loader:
        ...

fabric = L.Fabric(accelerator="cuda", devices=2)
fabric.launch(train)
""",
            at=(1, 3, 10),
            message_contains="reaches `fabric.launch`",
        ),
        Invalid(
            """
import lightning as L

class MNISTDataModule(L.LightningDataModule):
    def setup(self, stage=None):
        ...

dm = MNISTDataModule()
dm.setup()
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model, datamodule=dm)
""",
            at=(1, 8, 1),
            message_contains="setup()",
        ),
        Invalid(
            """
import lightning as L

def run(train_data):
    trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
    trainer.fit(model, train_data)
# %%
from torch.utils.data import DataLoader
loader = DataLoader(ds, batch_size=8)
run(train_data=loader)
""",
            at=(2, 2, 10),
            message_contains="trainer.fit",
        ),
        # Accelerate: handed to the launched function through `args=`, or read by it as a global.
        Invalid(
            _ACCELERATE_EXAMPLE,
            at=(1, 4, 12),
            message_contains="reaches `notebook_launcher`; build it inside the launched function",
        ),
        Invalid(_ACCELERATE_EXAMPLE, at=(1, 5, 15), message_contains="`eval_loader` (DataLoader)"),
    ]

    def check(self, facts):
        for build in facts.data:
            accelerate = build.handed_to == "notebook_launcher"
            where = f"`{build.handed_to}`" if build.handed_to and ("." in build.handed_to or accelerate) else (build.handed_to or "training")
            through = f" through `{build.through}`" if build.through else ""
            names = ", ".join(f"`{n}`" for n in build.names) or "data"
            advice = "build it inside the launched function" + ("" if accelerate else " or a `*_dataloader` hook")
            yield Finding(build.node, f"{names} ({build.label}) is built in the notebook process and reaches {where}{through}; {advice}")
        launches_of: dict[str, tuple[list, list[int]]] = {}  # name -> the launches handed it, and their statements
        if facts.datamodule_setups:
            for lp in facts.launches:  # in statement order
                for n in lp.handed:
                    found, statements = launches_of.setdefault(n, ([], []))
                    found.append(lp)
                    statements.append(lp.statement)
        for call, name, statement in facts.datamodule_setups:
            # The first launch handed `name` at or after the set-up (bisected, not a scan per set-up).
            found, statements = launches_of.get(name, ((), ()))
            k = bisect.bisect_left(statements, statement)
            lp = found[k] if k < len(found) else None
            rebound = lp is not None and facts.defined_between(name, statement, lp.statement)
            if lp is not None and not rebound:
                method = call.func.attr.value
                yield Finding(call, f"`{name}.{method}()` loads the data in the notebook process before `{lp.kind}`; let the Trainer call it in each process")
