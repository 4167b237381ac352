"""NBR402: `devices="auto"` (or no `devices`) in a notebook."""

from __future__ import annotations

from codemods import names as N
from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule

SINGLE_DEVICE_ACCELERATORS = ("cpu", "mps", "tpu")


def automatic_devices(facts):
    """(constructor, its `devices` argument or None) for each GPU Trainer/Fabric whose device count
    is left to Lightning: the rule reports them, `fix --devices N` sets them."""
    for c in facts.constructors:
        if c.kind not in ("trainer", "fabric") or N.has_star_args(c.node) or id(c.node) in facts.cpu_only_calls:
            continue
        accelerator = N.call_arg(c.node, "accelerator", 0 if c.kind == "fabric" else None)
        acc = N.string_value(accelerator.value) if accelerator is not None else "auto"
        if acc in SINGLE_DEVICE_ACCELERATORS or N.call_arg(c.node, "gpus") is not None:
            continue
        devices = N.call_arg(c.node, "devices", 2 if c.kind == "fabric" else None)
        if devices is None or N.string_value(devices.value) == "auto":
            yield c, devices


class DevicesAutoInNotebook(Rule):
    """
    ## What it does
    Finds `Trainer(...)` and `Fabric(...)` with `devices="auto"` or without `devices`, unless the
    accelerator is the CPU (or MPS/TPU), the old `gpus=` argument is given, `**kwargs` may carry
    it, or the call sits in the branch of `if torch.cuda.is_available():` that runs without CUDA.

    ## Why is this bad?
    Since Lightning 2.1, `devices="auto"` in an interactive session selects one GPU however many the
    machine has ("Trainer will use only 1 of N GPUs because it is running inside an interactive /
    notebook environment"). The notebook runs, silently, on a single GPU.

    ## Example
    ```python
    trainer = L.Trainer(accelerator="cuda", max_epochs=5)
    ```

    ## Use instead
    ```python
    trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook", max_epochs=5)
    ```

    ## Fix safety
    Unsafe, and only with `--devices N`: the fix sets `devices=N`, which changes how many GPUs
    train (and so the effective batch size).
    """

    code = "NBR402"
    name = "devices-auto-in-notebook"
    summary = "`devices=\"auto\"` (or no `devices`) runs on one GPU in a notebook"
    applicability = Applicability.UNSAFE
    fix_availability = FixAvailability.ALWAYS
    context_reason = "not scripts: there Lightning starts one process per device `devices=\"auto\"` finds"
    fix_title = "Set `devices=N` explicitly (`nbrefactor fix --devices N`)"

    VALID = [
        """
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=4, strategy="ddp_notebook")
cpu_trainer = L.Trainer(accelerator="cpu")
fabric = L.Fabric("cuda", "ddp_notebook", 2)
old = L.Trainer(gpus=2)
configured = L.Trainer(**config)
""",
        # The CPU branch of a CUDA check.
        """
import torch
import lightning as L
if torch.cuda.is_available():
    trainer = L.Trainer(gpus=1)
else:
    trainer = L.Trainer(max_epochs=5)
""",
    ]
    INVALID = [
        Invalid(
            """
import lightning as L
trainer = L.Trainer(max_epochs=3)
""",
            at=(1, 2, 11),
            message_contains="one GPU",
        ),
        Invalid(
            """
from lightning.fabric import Fabric
fabric = Fabric(accelerator="gpu", devices="auto")
""",
            at=(1, 2, 44),
        ),
    ]

    def check(self, facts):
        for c, devices in automatic_devices(facts):
            owner = "Trainer" if c.kind == "trainer" else "Fabric"
            if devices is None:
                yield Finding(c.node, f"`{owner}(...)` without `devices` uses one GPU in a notebook however many there are; pass `devices=N`")
            else:
                yield Finding(devices.value, f"`{owner}(devices=\"auto\")` uses one GPU in a notebook however many there are; pass `devices=N`")
