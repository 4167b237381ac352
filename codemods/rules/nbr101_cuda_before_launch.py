"""NBR101: CUDA initialised in the notebook process before a launch point."""

from __future__ import annotations

from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule, runs_before_a_launch


class CudaInitializedBeforeLaunch(Rule):
    """
    ## What it does
    Finds code that runs in the notebook process before `fabric.launch(...)`,
    `trainer.fit/validate/test/predict(...)` or `notebook_launcher(...)` and creates a CUDA context:
    `.cuda()`, `.to("cuda")` or `.to(device)` with a CUDA device, tensors created with
    `device="cuda"`, `torch.cuda.set_device / current_device / get_device_name /
    get_device_properties / get_device_capability / is_bf16_supported / synchronize / mem_get_info`,
    `torch.load(...)` or `load_from_checkpoint(...)` without `map_location`, Lightning's
    `find_usable_cuda_devices`, and bfloat16 autocast on CUDA. Calls of notebook functions and
    classes are followed, so `model = build()` is reported when `build` calls `.cuda()`.

    Accelerate and Hugging Face notebooks: `.to(accelerator.device)` (an `Accelerator()` made in the
    notebook process, without `cpu=True`, has the first GPU as its device),
    `from_pretrained(..., device_map=...)` with any map but `"cpu"` (the weights are placed on the
    GPUs), and `.train()` of a Hugging Face `Trainer` / `Seq2SeqTrainer` (or a notebook subclass),
    which trains on the GPU in the notebook process.

    Not reported, because they do not create a CUDA context: seeding (`torch.manual_seed`,
    `seed_everything`), `torch.backends.cudnn` flags, `torch.set_float32_matmul_precision`,
    `torch.device("cuda")` (a plain object), `torch.cuda.empty_cache()`, `torch.cuda.device_count()`
    and the memory statistics (`memory_allocated`, `memory_stats`, ...), which return zeros until
    CUDA is initialised.

    ## Why is this bad?
    Multi-GPU training from a notebook forks the notebook process (`ddp_notebook`). CUDA cannot be
    used in a child forked from a process that has a CUDA context: every training process dies with
    `RuntimeError: Cannot re-initialize CUDA in forked subprocess`, or hangs, and the kernel has to
    be restarted. The same holds after a launch: CUDA used between two launches breaks the second.

    ## Example
    ```python
    x = torch.tensor(1).cuda()

    def train(fabric):
        ...

    fabric = Fabric(accelerator="cuda", devices=2)
    fabric.launch(train)
    ```

    ## Use instead
    ```python
    def train(fabric):
        x = torch.tensor(1).cuda()
        ...

    fabric = Fabric(accelerator="cuda", devices=2)
    fabric.launch(train)
    ```

    ## Fix safety
    Unsafe: the fix moves the CUDA work into the launched function or a hook (where it runs once
    per training process, not once in the notebook), or removes a `.cuda()` / `.to(device)` that
    the Trainer makes redundant; values computed there are no longer on the GPU in the notebook.
    """

    code = "NBR101"
    name = "cuda-initialized-before-launch"
    summary = "CUDA is initialised in the notebook process before a launch point"
    applicability = Applicability.UNSAFE
    fix_availability = FixAvailability.SOMETIMES
    contexts = ("notebook", "script")
    context_reason = "in a script only when the script forks (`ddp_notebook`, `ddp_fork`, `notebook_launcher`): `strategy=\"ddp\"` starts fresh processes, which CUDA in the launching process does not reach"
    fix_title = "Move the CUDA work into the launched function or a hook"

    VALID = [
        # CUDA only inside the launched function.
        """
import torch
import lightning as L

def train(fabric):
    x = torch.tensor(1).cuda()
    torch.cuda.synchronize()

fabric = L.Fabric(accelerator="cuda", devices=2)
fabric.launch(train)
""",
        # Safe calls before the launch.
        """
import lightning as L
import torch
torch.manual_seed(0)
torch.backends.cudnn.benchmark = True
torch.set_float32_matmul_precision("high")
device = torch.device("cuda")
torch.cuda.empty_cache()
n = torch.cuda.device_count()
# %%
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
""",
        # No launch point: a plain PyTorch notebook is not about forking.
        """
import torch
model = torch.nn.Linear(2, 2).cuda()
""",
        # CUDA after the last launch cannot break it.
        """
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
# %%
model = model.cuda()
""",
        # Exclusive branches: load or train, and nothing launches after.
        """
import lightning as L

def train_model():
    trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
    if have_checkpoint:
        model = Net.load_from_checkpoint("pretrained.ckpt")
    else:
        trainer.fit(model)
        model = Net.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    return model

model = train_model()
""",
        # Accelerate on the CPU, weights kept on the CPU.
        """
from accelerate import Accelerator, notebook_launcher
from transformers import AutoModel
cpu = Accelerator(cpu=True)
model = AutoModel.from_pretrained("bert-base-cased", device_map="cpu").to(cpu.device)
notebook_launcher(training_function, num_processes=2)
""",
        # map_location given.
        """
import torch
import lightning as L
state = torch.load("weights.pt", map_location="cpu")
model = MyModel.load_from_checkpoint("last.ckpt", map_location="cpu")
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
""",
    ]
    INVALID = [
        Invalid(
            """
import torch
from lightning.fabric import Fabric
# %% [markdown]
# Some text.
# %%
x = torch.tensor(1).cuda()
torch.cuda.is_available()
# %%
def train(fabric):
    ...

fabric = Fabric(accelerator="cuda", devices=2)
fabric.launch(train)
""",
            at=(3, 1, 5),
            message_contains=".cuda()",
        ),
        Invalid(
            """
import torch
import pytorch_lightning as pl
device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
# %%
model = Net().to(device)
trainer = pl.Trainer(accelerator="gpu", devices=2, strategy="ddp_notebook")
trainer.fit(model)
""",
            at=(2, 1, 9),
            message_contains=".to(device)",
        ),
        Invalid(
            """
import lightning as L
from torch import cuda
print(cuda.get_device_name(0))
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
""",
            at=(1, 3, 7),
            message_contains="get_device_name",
        ),
        Invalid(
            """
import torch
import lightning as L

def build():
    return torch.zeros(3, device="cuda")

weights = build()
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
""",
            at=(1, 7, 11),
            message_contains="build()",
        ),
        Invalid(
            """
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
# %%
model = LitModel.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
# %%
trainer2 = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer2.test(model)
""",
            at=(2, 1, 9),
            message_contains="map_location",
        ),
        # Peeking at a batch of a pinned-memory loader.
        Invalid(
            """
import lightning as L
from torch.utils.data import DataLoader
loader = DataLoader(ds, batch_size=8, pin_memory=True)
imgs, _ = next(iter(loader))
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model, loader)
""",
            at=(1, 4, 16),
            message_contains="pin_memory",
        ),
        # Accelerate: the notebook's Accelerator's device is the first GPU.
        Invalid(
            """
from accelerate import Accelerator, notebook_launcher
accelerator = Accelerator()
model = Net().to(accelerator.device)
notebook_launcher(training_function, num_processes=2)
""",
            at=(1, 3, 9),
            message_contains=".to(accelerator.device)",
        ),
        # A Hugging Face Trainer trains on the GPU in the notebook process, then a launch forks.
        Invalid(
            """
from transformers import AutoModelForSequenceClassification, Trainer
from accelerate import notebook_launcher

class WeightedTrainer(Trainer):
    pass

model = AutoModelForSequenceClassification.from_pretrained("bert-base-cased")
trainer = WeightedTrainer(model=model, args=args, train_dataset=ds)
trainer.train()
# %%
notebook_launcher(training_function, num_processes=2)
""",
            at=(1, 9, 1),
            message_contains="Hugging Face `Trainer`",
        ),
        Invalid(
            """
from transformers import AutoModelForCausalLM
from accelerate import notebook_launcher
base = AutoModelForCausalLM.from_pretrained("gpt2", device_map="auto")
notebook_launcher(training_function, num_processes=2)
""",
            at=(1, 3, 8),
            message_contains="device_map",
        ),
        # A CUDA device handed to a notebook function that moves data with it.
        Invalid(
            """
import torch
import lightning as L
device = torch.device("cuda")

def plot(model, device):
    x = torch.linspace(0, 1, 10).to(device)

plot(model, device=device)
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
""",
            at=(1, 8, 1),
            message_contains="plot()",
        ),
    ]

    def check(self, facts):
        if not self.forks_here(facts):
            return
        for use in facts.cuda:
            if runs_before_a_launch(facts, use):
                via = f"`{use.via}()` runs code that initialises CUDA: " if use.via else ""
                yield Finding(use.node, f"{via}{use.reason} in the notebook process before the launch point; forked training processes cannot use CUDA")
