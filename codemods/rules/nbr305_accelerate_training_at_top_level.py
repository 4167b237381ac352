"""NBR305: Accelerate training at top level, with no `notebook_launcher` to run it."""

from __future__ import annotations

from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule


class AccelerateTrainingAtTopLevel(Rule):
    """
    ## What it does
    Finds Accelerate training run in the notebook process: `accelerator.prepare(...)`,
    `accelerator.backward(...)`, `gather` / `gather_for_metrics` / `reduce`,
    `wait_for_everyone()`, `clip_grad_norm_`, `accumulate(...)` ... called at top level, or in a
    notebook function called at top level, on an `Accelerator` of the notebook, in a notebook that
    never calls `notebook_launcher`. Only notebooks that run `accelerator.backward(...)` there are
    reported: `prepare` alone is also how a checkpoint is loaded for inference
    (`accelerator.load_state`). One finding per statement.

    ## Why is this bad?
    From a notebook, Accelerate trains on several GPUs only through `notebook_launcher(function,
    num_processes=N)` (accelerate 1.15, `accelerate/launchers.py`); the notebook kernel is one
    process, so an `Accelerator()` there sees no distributed environment (`accelerate/state.py`,
    `PartialState.__init__`: no backend, `num_processes = 1`) and trains on one GPU, silently, however
    many the machine has. `accelerate launch` and its config file do not apply to a notebook.

    ## Example
    ```python
    accelerator = Accelerator()
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for batch in loader:
        loss = model(batch).sum()
        accelerator.backward(loss)
        optimizer.step()
    ```

    ## Use instead
    ```python
    def training_function():
        accelerator = Accelerator()
        model, optimizer, loader = accelerator.prepare(build_model(), make_optimizer(), make_loader())
        for batch in loader:
            ...

    notebook_launcher(training_function, num_processes=2)
    ```

    ## Fix safety
    Safe, and only with `--devices N` (`notebook_launcher` needs `num_processes`): the training
    region (the `Accelerator(...)`, what is built after it for training, the loop and every later
    line that uses the accelerator) moves, in order, into `def training_function():` in the cell
    where it started, and `notebook_launcher(training_function, num_processes=N)` goes where it
    ended. `print` becomes `accelerator.print`; names the notebook reads afterwards come back
    from the main process through a file (`accelerator.unwrap_model(model)` for a prepared
    model). It refuses, and says why, when the notebook has several `Accelerator`s or reads a
    prepared optimizer or loader after training.
    """

    code = "NBR305"
    name = "accelerate-training-at-top-level"
    summary = "Accelerate training runs in the notebook process, on one GPU, with no `notebook_launcher`"
    applicability = Applicability.SAFE
    fix_availability = FixAvailability.SOMETIMES
    context_reason = "not scripts: `accelerate launch script.py` runs top-level Accelerate training in every process"
    fix_title = "Move the training into a function run by `notebook_launcher`"

    VALID = [
        """
from accelerate import Accelerator, notebook_launcher

def training_function():
    accelerator = Accelerator()
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.backward(loss)

notebook_launcher(training_function, num_processes=2)
""",
        # An Accelerator on its own trains nothing; `prepare` to load a checkpoint for inference.
        """
from accelerate import Accelerator
accelerator = Accelerator()
print(accelerator.is_main_process)
unet = accelerator.prepare(pipeline.unet)
accelerator.load_state("checkpoint-100")
""",
    ]
    INVALID = [
        Invalid(
            """
from accelerate import Accelerator
accelerator = Accelerator()
# %%
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
# %%
for (x,) in loader:
    loss = model(x).sum()
    accelerator.backward(loss)
    optimizer.step()
""",
            at=(2, 1, 28),
            message_contains="accelerator.prepare",
        ),
        Invalid(
            """
import accelerate
acc = accelerate.Accelerator()

def train_loop():
    for batch in loader:
        acc.backward(model(batch).sum())

train_loop()
""",
            at=(1, 8, 1),
            message_contains="through `train_loop()`",
        ),
    ]

    def check(self, facts):
        if any(lp.kind == "notebook_launcher" for lp in facts.launches):
            return
        if not any(t.what == "accelerator.backward" for t in facts.accelerate_training):
            return  # no training step: `prepare` for inference or loading a checkpoint
        seen: set[int] = set()
        for t in facts.accelerate_training:
            if t.statement in seen:
                continue
            seen.add(t.statement)
            via = f" (through `{t.via}()`)" if t.via else ""
            yield Finding(t.node, f"Accelerate training (`{t.what}`){via} runs in the notebook process, on one GPU; move it into a training function (create the `Accelerator` first inside it) and call `notebook_launcher(training_function, num_processes=N)`")
