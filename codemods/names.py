"""Resolve names the way Python would, fast: import aliases, canonical Lightning paths, known APIs.

libcst's QualifiedNameProvider is correct but costs ~156 ms per 500 lines; notebooks bind almost
everything at top level, so a table of import aliases built in one pass is enough and ~100x cheaper.
"""

from __future__ import annotations

import functools

import libcst as cst

# Old and split-out package names and re-export paths, mapped to one canonical spelling.
_PREFIXES = (
    ("pytorch_lightning", "lightning.pytorch"),
    ("lightning_fabric", "lightning.fabric"),
    ("lightning.pytorch.trainer.trainer.", "lightning.pytorch."),
    ("lightning.pytorch.trainer.", "lightning.pytorch."),
    ("lightning.pytorch.core.module.", "lightning.pytorch."),
    ("lightning.pytorch.core.datamodule.", "lightning.pytorch."),
    ("lightning.pytorch.core.", "lightning.pytorch."),
    ("lightning.fabric.fabric.", "lightning.fabric."),
    ("lightning.pytorch.strategies.ddp.", "lightning.pytorch.strategies."),
    ("lightning.fabric.strategies.ddp.", "lightning.fabric.strategies."),
    ("torch.utils.data.dataloader.", "torch.utils.data."),
    ("torch.utils.data.dataset.", "torch.utils.data."),
    ("accelerate.launchers.", "accelerate."),
    ("accelerate.accelerator.", "accelerate."),
    ("torch.cuda.memory.", "torch.cuda."),
    ("torch.serialization.", "torch."),
)
_TOP_LEVEL_REEXPORTS = {  # `lightning.X` is `lightning.pytorch.X` or `lightning.fabric.X`
    "lightning.Trainer": "lightning.pytorch.Trainer",
    "lightning.LightningModule": "lightning.pytorch.LightningModule",
    "lightning.LightningDataModule": "lightning.pytorch.LightningDataModule",
    "lightning.Callback": "lightning.pytorch.Callback",
    "lightning.seed_everything": "lightning.fabric.seed_everything",
    "lightning.pytorch.seed_everything": "lightning.fabric.seed_everything",
    "lightning.Fabric": "lightning.fabric.Fabric",
}


def canonical(qname: str | None) -> str | None:
    """One spelling per API: `pytorch_lightning.Trainer` and `lightning.Trainer` both give
    `lightning.pytorch.Trainer`."""
    return None if qname is None else _canonical(qname)


@functools.lru_cache(maxsize=65536)  # a notebook asks for the same few names thousands of times
def _canonical(qname: str) -> str:
    for old, new in _PREFIXES:
        if old.endswith("."):
            if qname.startswith(old):
                qname = new + qname[len(old) :]
        elif qname == old or qname.startswith(old + "."):
            qname = new + qname[len(old) :]
    return _TOP_LEVEL_REEXPORTS.get(qname, qname)


FABRIC = "lightning.fabric.Fabric"
TRAINER = "lightning.pytorch.Trainer"
LIGHTNING_MODULE = "lightning.pytorch.LightningModule"
DATA_MODULE = "lightning.pytorch.LightningDataModule"
DDP_STRATEGIES = {"lightning.pytorch.strategies.DDPStrategy", "lightning.fabric.strategies.DDPStrategy"}
NOTEBOOK_LAUNCHER = "accelerate.notebook_launcher"
LIGHTNING_PACKAGES = ("lightning", "pytorch_lightning", "lightning_fabric")

# Accelerate: the constructors that fill its process state (accelerate/state.py), and the
# `Accelerator` methods that train (or talk to the other processes).
ACCELERATOR = "accelerate.Accelerator"
ACCELERATE_STATES = {
    ACCELERATOR: "Accelerator",
    "accelerate.state.AcceleratorState": "AcceleratorState",
    "accelerate.state.PartialState": "PartialState",
    "accelerate.PartialState": "PartialState",
}
ACCELERATE_TRAINING_METHODS = {
    "prepare", "prepare_model", "prepare_optimizer", "prepare_data_loader", "prepare_scheduler", "backward",
    "gather", "gather_for_metrics", "reduce", "wait_for_everyone", "clip_grad_norm_", "clip_grad_value_",
    "accumulate", "pad_across_processes",
}
# Hugging Face Trainers: `.train()` trains in the process that calls it, on its GPU.
HF_TRAINERS = {
    "transformers.Trainer", "transformers.trainer.Trainer",
    "transformers.Seq2SeqTrainer", "transformers.trainer_seq2seq.Seq2SeqTrainer",
}
BITSANDBYTES = "bitsandbytes"

DATALOADERS = {
    "torch.utils.data.DataLoader",
    "torch_geometric.loader.DataLoader",
    "torch_geometric.data.DataLoader",
}
DATASET_FUNCTIONS = {
    "torch.utils.data.TensorDataset",
    "torch.utils.data.ConcatDataset",
    "torch.utils.data.Subset",
    "torch.utils.data.random_split",
    "datasets.load_dataset",
}
DATASET_MODULE_PREFIXES = ("torchvision.datasets.", "torchaudio.datasets.", "torchtext.datasets.", "torch_geometric.datasets.")
DATASET_BASES = {"torch.utils.data.Dataset", "torch.utils.data.IterableDataset"}


def dotted(expr: cst.BaseExpression) -> str | None:
    """`a.b.c` as text, or None for anything that is not a plain dotted name."""
    if isinstance(expr, cst.Name):
        return expr.value
    if isinstance(expr, cst.Attribute):
        head = dotted(expr.value)
        return None if head is None else f"{head}.{expr.attr.value}"
    return None


def import_bindings(node: cst.Import | cst.ImportFrom) -> dict[str, str]:
    """The names an import statement binds, each with the qualified name it stands for."""
    out: dict[str, str] = {}
    if isinstance(node, cst.Import):
        for alias in node.names:
            full = dotted(alias.name)
            if full is None:
                continue
            if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
                out[alias.asname.name.value] = full
            else:
                top = full.split(".")[0]
                out[top] = top
        return out
    if node.relative or node.module is None or isinstance(node.names, cst.ImportStar):
        return out
    module = dotted(node.module)
    if module is None:
        return out
    for alias in node.names:
        name = dotted(alias.name)
        if name is None:
            continue
        bound = alias.asname.name.value if alias.asname is not None and isinstance(alias.asname.name, cst.Name) else name
        out[bound] = f"{module}.{name}"
    return out


def is_lightning(qname: str | None) -> bool:
    return qname is not None and qname.split(".")[0] in LIGHTNING_PACKAGES


def string_value(expr: cst.BaseExpression | None) -> str | None:
    """The value of a plain string literal (or the literal head of an f-string)."""
    if isinstance(expr, cst.SimpleString):
        try:
            value = expr.evaluated_value
        except Exception:  # noqa: BLE001 - odd prefixes
            return None
        return value if isinstance(value, str) else None
    if isinstance(expr, cst.FormattedString):
        head = expr.parts[0] if expr.parts else None
        return head.value if isinstance(head, cst.FormattedStringText) else ""
    if isinstance(expr, cst.ConcatenatedString):
        left = string_value(expr.left)
        return left
    return None


def call_arg(call: cst.Call, keyword: str, position: int | None = None) -> cst.Arg | None:
    """The argument passed as `keyword=` or at `position` (0-based), if any."""
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == keyword:
            return arg
    if position is not None:
        positional = [a for a in call.args if a.keyword is None and not a.star]
        if len(positional) > position:
            return positional[position]
    return None


def has_star_args(call: cst.Call) -> bool:
    return any(a.star for a in call.args)


def is_main_guard(node: cst.CSTNode) -> bool:
    """`if __name__ == "__main__":` (either side), with no `elif`/`else`: in a kernel `__name__` is
    "__main__", so its body is top-level code that always runs."""
    if not isinstance(node, cst.If) or node.orelse is not None:
        return False
    test = node.test
    if not isinstance(test, cst.Comparison) or len(test.comparisons) != 1:
        return False
    target = test.comparisons[0]
    if not isinstance(target.operator, cst.Equal):
        return False
    sides = (test.left, target.comparator)
    return any(isinstance(a, cst.Name) and a.value == "__name__" and string_value(b) == "__main__" for a, b in (sides, sides[::-1]))


def guarded_statements(node: cst.If) -> list[cst.BaseStatement]:
    """The statements of a guard's body, as top-level statements (a one-line body becomes a line)."""
    if isinstance(node.body, cst.SimpleStatementSuite):
        return [cst.SimpleStatementLine(body=node.body.body)]
    return list(node.body.body)
