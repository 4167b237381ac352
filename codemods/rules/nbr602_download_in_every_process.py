"""NBR602: a dataset downloaded (`download=True`) where every training process runs it at once."""

from __future__ import annotations

import libcst as cst

from codemods import names as N
from codemods.fast_tree import source_of
from codemods.walk import children
from codemods.facts import NotebookFacts, runs_before
from codemods.rules.base import (
    Applicability,
    Finding,
    FixAvailability,
    Invalid,
    Rule,
    Valid,
)

# Hooks Lightning runs in every process (`prepare_data` runs once per node: the right place).
EVERY_PROCESS_HOOKS = {"setup", "train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader", "configure_model"}
# Words in an `if` test or a `with` item that make the block run on one process first or only.
_RANK_GUARDS = ("rank", "is_global_zero", "is_main_process", "is_local_main_process", "main_process_first", "rank_zero_first")


def _downloads(call: cst.Call) -> bool:
    arg = N.call_arg(call, "download")
    return arg is not None and isinstance(arg.value, cst.Name) and arg.value.value == "True"


def _downloads_in(node: cst.CSTNode) -> list[tuple[cst.Call, tuple[str, ...], bool]]:
    """Every `...(download=True)` call under `node`: (call, enclosing function names, under a rank
    guard). A read-only walk: libcst's visitor would rebuild (and validate) every node it passes."""
    found: list[tuple[cst.Call, tuple[str, ...], bool]] = []
    functions: list[str] = []
    guards = 0
    stack: list[tuple[cst.CSTNode, bool]] = [(node, False)]
    while stack:
        n, leaving = stack.pop()
        t = type(n)
        step = 0
        if t is cst.FunctionDef:
            if leaving:
                functions.pop()
            else:
                functions.append(n.name.value)
        elif t is cst.If:
            step = _guarding(n.test)
        elif t is cst.With:
            step = any(_guarding(item.item) for item in n.items)
        elif t is cst.Call and not leaving and _downloads(n):
            found.append((n, tuple(functions), guards > 0))
        if leaving:
            guards -= step
            continue
        guards += step
        stack.append((n, True))
        stack.extend((c, False) for c in reversed(children(n)))
    return found


def _guarding(expr: cst.BaseExpression) -> bool:
    text = source_of(expr)
    return any(word in text for word in _RANK_GUARDS)


def _after_top_level_launch(facts: NotebookFacts, index: int, call: cst.Call) -> bool:
    """Does this top-level download (statement `index`) run after a top-level `fabric.launch()`?"""
    for lp in facts.launches:
        top_level = lp.kind == "fabric.launch" and lp.function is None and lp.via is None
        if top_level and (lp.statement < index or (lp.statement == index and runs_before(facts.statements[index].node, lp.node, call))):
            return True
    return False


def _in_launched_code(facts: NotebookFacts, functions: tuple[str, ...], call: cst.Call) -> str | None:
    """Why this download, inside `functions` (outermost first), runs in every process, or None."""
    if functions[-1] in EVERY_PROCESS_HOOKS:
        return f"`{functions[-1]}()` runs in every training process"
    for lp in facts.launches:
        if lp.kind in ("fabric.launch", "notebook_launcher") and lp.function == functions[0]:
            return f"`{functions[0]}()` is launched in every training process"
        summary = facts.functions.get(functions[0])
        inside = lp.via == functions[0] and lp.kind == "fabric.launch" and lp.function is None and lp.inner is not None
        if inside and summary is not None and runs_before(summary.node, lp.inner, call):
            return f"it runs after `fabric.launch()` in `{functions[0]}()`, in every training process"
    return None


class DownloadInEveryProcess(Rule):
    """
    ## What it does
    Finds a dataset built with `download=True` where every training process builds it at the same
    time: after a top-level `fabric.launch()`, in the function `fabric.launch(...)` or
    `notebook_launcher(...)` runs, after `fabric.launch()` inside a function, or in a hook
    Lightning runs in every process (`setup()`, `train_dataloader()`, ...), with no rank-0 guard
    (`if fabric.global_rank == 0:`, `if trainer.is_global_zero:`, `with fabric.rank_zero_first():`).

    ## Why is this bad?
    Each process finds the files missing and downloads them into the same folder: the archives
    overwrite each other, and a process may read a half-written file (a corrupt archive, a failed
    checksum, a truncated dataset). A download at the top level before the launch is not flagged:
    the launching process finishes it before the other processes start, and they find the files.

    ## Example
    ```python
    fabric = L.Fabric(accelerator="cuda", devices=2, strategy="ddp")
    fabric.launch()
    dataset = MNIST("data", download=True)
    ```

    ## Use instead
    ```python
    fabric = L.Fabric(accelerator="cuda", devices=2, strategy="ddp")
    fabric.launch()
    with fabric.rank_zero_first():  # or: if fabric.global_rank == 0: ...; fabric.barrier()
        dataset = MNIST("data", download=True)
    ```
    In a LightningModule or LightningDataModule, download in `prepare_data()` and build the
    dataset without `download=True` in `setup()`.

    ## Fix safety
    No fix: where the download belongs (`prepare_data()`, a rank-0 guard) is the author's choice.
    """

    code = "NBR602"
    name = "download-in-every-process"
    summary = "A dataset is downloaded by every training process at once"
    applicability = Applicability.NONE
    fix_availability = FixAvailability.NONE
    context_reason = "not notebooks: there data built in the notebook process is NBR201"
    contexts = ("script",)

    VALID = [
        Valid("""
import lightning as L
from torchvision.datasets import MNIST
dataset = MNIST("data", download=True)
fabric = L.Fabric(accelerator="cuda", devices=2, strategy="ddp")
fabric.launch()
""", context="script"),
        Valid("""
import lightning as L
from torchvision.datasets import MNIST
fabric = L.Fabric(accelerator="cuda", devices=2, strategy="ddp")
fabric.launch()
with fabric.rank_zero_first():
    dataset = MNIST("data", download=True)
""", context="script"),
        Valid("""
import lightning as L
from torchvision.datasets import MNIST

class Data(L.LightningDataModule):
    def prepare_data(self):
        MNIST("data", download=True)

    def setup(self, stage):
        self.train = MNIST("data")
""", context="script"),
    ]
    INVALID = [
        Invalid(
            """
import lightning as L
from torchvision.datasets import MNIST
fabric = L.Fabric(accelerator="cuda", devices=2, strategy="ddp")
fabric.launch()
dataset = MNIST("data", download=True)
""",
            at=(1, 5, 11),
            message_contains="barrier()",
            context="script",
        ),
        Invalid(
            """
import lightning as L
from torchvision.datasets import MNIST

class Data(L.LightningDataModule):
    def setup(self, stage):
        self.train = MNIST("data", download=True)
""",
            at=(1, 6, 22),
            message_contains="prepare_data()",
            context="script",
        ),
    ]

    def check(self, facts):
        for index, st in enumerate(facts.statements):
            for call, functions, guarded in _downloads_in(st.node):
                why = None if guarded else self._why(facts, index, functions, call)
                if why is not None:
                    what = N.dotted(call.func) or "the dataset"
                    yield Finding(call, f"`{what}(..., download=True)`: {why}, and concurrent downloads into one folder corrupt the files; download in `prepare_data()`, or under `if fabric.global_rank == 0:` followed by `fabric.barrier()` (or `with fabric.rank_zero_first():`)")

    @staticmethod
    def _why(facts, index, functions, call) -> str | None:
        if not functions:
            return "it runs after `fabric.launch()`, in every training process" if _after_top_level_launch(facts, index, call) else None
        return _in_launched_code(facts, functions, call)
