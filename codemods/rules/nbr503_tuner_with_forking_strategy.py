"""NBR503: `Tuner(trainer).lr_find()` / `.scale_batch_size()` on a Trainer that forks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import libcst as cst

from codemods import names as N
from codemods.fast_tree import source_of
from codemods.facts import NotebookFacts, qualified_name, scan
from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule

TUNERS = ("lightning.pytorch.tuner.Tuner", "lightning.pytorch.tuner.tuning.Tuner")
METHODS = ("lr_find", "scale_batch_size")
DISTRIBUTED_PREFIXES = ("ddp", "fsdp", "deepspeed")


@dataclass(frozen=True)
class TunerCall:
    """A `.lr_find(...)` / `.scale_batch_size(...)` on a `Tuner` whose Trainer forks."""

    call: cst.Call  # the tuning call
    method: str  # "lr_find" | "scale_batch_size"
    statement: int  # the top-level statement that runs it
    tuner: cst.Call  # `Tuner(...)`
    tuner_statement: int  # the statement that builds the Tuner
    trainer: cst.Call  # the `Trainer(...)` the Tuner gets
    trainer_statement: int  # the statement that builds the Trainer
    forks: str  # why the Trainer forks, for messages: 'strategy="ddp_notebook"', 'devices=2'


def _several_devices(expr: cst.BaseExpression) -> bool:
    """`devices=` that asks for more than one device: 2, -1, "2", "0,1", "-1", [0, 1]."""
    if isinstance(expr, cst.Integer):
        return int(expr.value, 0) > 1
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Minus):
        return isinstance(expr.expression, cst.Integer)  # -1: every device
    if isinstance(expr, (cst.List, cst.Tuple)):
        return len(expr.elements) > 1
    text = (N.string_value(expr) or "").strip() if isinstance(expr, cst.SimpleString) else ""
    if "," in text:  # "0,1": device ids
        return len([part for part in text.split(",") if part.strip()]) > 1
    return text.lstrip("-").isdigit() and (int(text) == -1 or int(text) > 1)


def forks(trainer: cst.Call, env) -> str | None:
    """Why this `Trainer(...)` runs several processes, or None (one process, or unknown)."""
    if N.has_star_args(trainer):
        return None
    strategy = N.call_arg(trainer, "strategy")
    if strategy is not None:
        if isinstance(strategy.value, cst.SimpleString):
            name = N.string_value(strategy.value) or ""
            if name.startswith(DISTRIBUTED_PREFIXES):
                return f'strategy="{name}"'
        elif isinstance(strategy.value, cst.Call) and qualified_name(strategy.value.func, env) in N.DDP_STRATEGIES:
            return "a `DDPStrategy`"
    devices = N.call_arg(trainer, "devices")
    if devices is not None and _several_devices(devices.value):
        return f"devices={source_of(devices.value)}"
    return None


def _bound_call(st, kinds: tuple[str, ...], env) -> tuple[str, cst.Call] | None:
    """(name, call) for a top-level `name = Trainer(...)` / `name = Tuner(...)`."""
    node = st.node
    if not (isinstance(node, cst.SimpleStatementLine) and len(node.body) == 1 and isinstance(node.body[0], cst.Assign)):
        return None
    assign = node.body[0]
    if len(assign.targets) != 1 or not isinstance(assign.targets[0].target, cst.Name) or not isinstance(assign.value, cst.Call):
        return None
    if qualified_name(assign.value.func, env) not in kinds:
        return None
    return assign.targets[0].target.value, assign.value


def tuner_calls(facts: NotebookFacts) -> Iterator[TunerCall]:
    """Every tuning call (in statement order) on a Tuner whose Trainer forks: `Tuner(trainer)`,
    `tuner = Tuner(trainer)`, `Tuner(Trainer(...))`, with `trainer = Trainer(...)` at top level."""
    env = facts.env
    trainers: dict[str, tuple[cst.Call, int]] = {}
    tuners: dict[str, tuple[cst.Call, int, tuple[cst.Call, int] | None]] = {}
    for st in facts.statements:
        for call in st.calls:
            found = _tuning_call(call, st.index, env, trainers, tuners)
            if found is not None:
                yield found
        for name in st.defines:
            trainers.pop(name, None)
            tuners.pop(name, None)
        bound = _bound_call(st, (N.TRAINER, *TUNERS), env)
        if bound is not None:
            name, call = bound
            if qualified_name(call.func, env) == N.TRAINER:
                trainers[name] = (call, st.index)
            else:
                tuners[name] = (call, st.index, _trainer_of(call, st.index, env, trainers))


def _trainer_of(tuner: cst.Call, index: int, env, trainers) -> tuple[cst.Call, int] | None:
    arg = N.call_arg(tuner, "trainer", 0)
    if arg is None:
        return None
    if isinstance(arg.value, cst.Name):
        return trainers.get(arg.value.value)
    if isinstance(arg.value, cst.Call) and qualified_name(arg.value.func, env) == N.TRAINER:
        return arg.value, index
    return None


def _tuning_call(call: cst.Call, index: int, env, trainers, tuners) -> TunerCall | None:
    func = call.func
    if not (isinstance(func, cst.Attribute) and func.attr.value in METHODS):
        return None
    receiver = func.value
    if isinstance(receiver, cst.Call) and qualified_name(receiver.func, env) in TUNERS:
        tuner, tuner_statement, trainer = receiver, index, _trainer_of(receiver, index, env, trainers)
    elif isinstance(receiver, cst.Name) and receiver.value in tuners:
        tuner, tuner_statement, trainer = tuners[receiver.value]
    else:
        return None
    why = forks(trainer[0], env) if trainer is not None else None
    if why is None:
        return None
    return TunerCall(call, func.attr.value, index, tuner, tuner_statement, trainer[0], trainer[1], why)


def why_no_fix(found: TunerCall, facts: NotebookFacts, others: list[TunerCall]) -> str | None:
    """Why `nbrefactor fix --unsafe-fixes` cannot tune this call on one CPU process, or None."""
    if found.method == "scale_batch_size":
        return "scale_batch_size"
    if any(o.tuner is found.tuner and o.method == "scale_batch_size" for o in others):
        return "the same Tuner also runs `scale_batch_size`"
    if any(a.keyword is None for a in found.trainer.args):
        return "the Trainer has positional arguments"
    if found.trainer_statement != found.tuner_statement:
        rebound = sorted(n for n in scan(found.trainer).loads if facts.defined_between(n, found.trainer_statement, found.tuner_statement - 1))
        if rebound:
            return f"`{rebound[0]}` changes between the Trainer and the Tuner, so the Trainer's arguments cannot be copied"
    return None


class TunerWithForkingStrategy(Rule):
    """
    ## What it does
    Finds `Tuner(trainer).lr_find(...)` and `Tuner(trainer).scale_batch_size(...)` (also through a
    `tuner = Tuner(trainer)` name) where `trainer` is built by `Trainer(...)` with a strategy that
    runs several processes (`ddp_notebook`, `ddp_fork`, `ddp_spawn`, `ddp`, FSDP, DeepSpeed, a
    `DDPStrategy`) or more than one device (`devices=2`, `devices=-1`, `devices=[0, 1]`,
    `devices="0,1"`). `devices="auto"` or no `devices` is not reported: in a notebook Lightning then
    uses one device, and the tuner works; NBR402 reports that Trainer, and once it gets
    `devices=N` (by hand or `fix --devices N`) this rule reports the tuner.

    ## Why is this bad?
    Both tuners run `trainer.fit` with a finder callback, and with a fork-based strategy that fit
    runs in new processes (`lightning/pytorch/tuner/tuning.py`, `Tuner.lr_find` and
    `Tuner.scale_batch_size`):

    - `scale_batch_size` refuses at once: `_check_scale_batch_size_configuration` raises
      `ValueError: Tuning the batch size is currently not supported with distributed strategies`
      (and `BatchSizeFinder.setup` in `callbacks/batch_size_finder.py` raises the same).
    - `lr_find` forks: in each process `LearningRateFinder.on_fit_start` runs the search and then
      raises `_TunerExitException` to end the fit (`callbacks/lr_finder.py`, `lr_find`). Only
      `_call_and_handle_interrupt` in the notebook process (`trainer/call.py`) catches it; in the
      forked processes it escapes `_MultiProcessingLauncher._wrapping_function`, so the cell fails
      with `ProcessRaisedException: ... _TunerExitException`, and the suggestion, computed in the
      forked processes, never reaches the notebook.

    ## Example
    ```python
    trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook", max_epochs=10)
    lr_finder = Tuner(trainer).lr_find(model)
    trainer.fit(model)
    ```

    ## Use instead
    ```python
    trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook", max_epochs=10)
    with unittest.mock.patch("torch.cuda.is_available", return_value=False):
        lr_finder = Tuner(L.Trainer(accelerator="cpu", devices=1, strategy="auto", max_epochs=10)).lr_find(model)
    trainer.fit(model)  # forks, and trains with the learning rate lr_finder set on the model
    ```
    For `scale_batch_size`, find the batch size in a one-device run (`devices=1`) before moving to
    several devices, and set it by hand.

    ## Fix safety
    Unsafe, and only for `lr_find` on a Trainer built by a `Trainer(...)` call with keyword
    arguments: the fix gives the Tuner a Trainer with the same arguments but
    `accelerator="cpu", devices=1, strategy="auto", logger=False` (no `callbacks`: the search
    replaces them while it runs), so the search runs in the notebook process, which does not
    fork. `lr_find` then restores the model's weights and sets its learning rate attribute there,
    and the forked `trainer.fit` trains with it. The search runs on the CPU (slower, and its
    numbers can differ a little from a GPU's). `lr_find` saves and restores the CUDA random state
    (`isolate_rng` -> `torch.cuda.get_rng_state_all`, which initialises CUDA whenever
    `torch.cuda.is_available()`), and CUDA initialised in the notebook process breaks the forked
    fit; the fix therefore runs the search under
    `unittest.mock.patch("torch.cuda.is_available", return_value=False)`. No fix for
    `scale_batch_size`: a batch size found on the CPU says nothing about GPU memory.
    """

    code = "NBR503"
    name = "tuner-with-forking-strategy"
    summary = "`Tuner.lr_find` / `Tuner.scale_batch_size` on a Trainer that forks"
    applicability = Applicability.UNSAFE
    fix_availability = FixAvailability.SOMETIMES
    context_reason = "not scripts: the tuner runs in the script's own process; a forking strategy in a script is NBR601"
    fix_title = "Tune the learning rate on one CPU process (`--unsafe-fixes`)"

    VALID = [
        """
import lightning as L
from lightning.pytorch.tuner import Tuner
trainer = L.Trainer(accelerator="cuda", devices=1, max_epochs=5)
Tuner(trainer).lr_find(model)
Tuner(trainer).scale_batch_size(model)
auto = L.Trainer(accelerator="cuda", devices="auto")
Tuner(auto).lr_find(model)
""",
        # The Trainer is rebuilt with several devices only after tuning.
        """
import lightning as L
from lightning.pytorch.tuner import Tuner
trainer = L.Trainer(accelerator="cuda", devices=1)
tuner = Tuner(trainer)
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
tuner.lr_find(model)
trainer.fit(model)
""",
    ]
    INVALID = [
        Invalid(
            """
import lightning as L
from lightning.pytorch.tuner import Tuner
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
# %%
lr_finder = Tuner(trainer).lr_find(model)
""",
            at=(2, 1, 13),
            message_contains="_TunerExitException",
        ),
        Invalid(
            """
import pytorch_lightning as pl
trainer = pl.Trainer(accelerator="gpu", devices=[0, 1])
tuner = pl.tuner.Tuner(trainer)
tuner.scale_batch_size(model, mode="binsearch")
""",
            at=(1, 4, 1),
            message_contains="one-device run",
        ),
    ]

    def check(self, facts):
        found = list(tuner_calls(facts))
        for t in found:
            where = f"`{t.method}()` on a Trainer with {t.forks}"
            if t.method == "scale_batch_size":
                yield Finding(t.call, f"{where} raises ValueError (batch size tuning is not supported with distributed strategies): find the batch size in a one-device run (`devices=1`, no fork) before moving to several devices, and set it by hand")
                continue
            reason = why_no_fix(t, facts, found)
            todo = ("`nbrefactor fix --unsafe-fixes` tunes on one CPU process" if reason is None
                    else f"tune with a one-process Trainer: `Tuner(Trainer(..., accelerator=\"cpu\", devices=1, strategy=\"auto\"))` ({reason})")
            yield Finding(t.call, f"{where} runs the search in forked processes: they fail with `_TunerExitException`, and the suggestion never reaches the notebook; {todo}")
