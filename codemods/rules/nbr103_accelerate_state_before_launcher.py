"""NBR103: Accelerate's process state created in the notebook process before `notebook_launcher`."""

from __future__ import annotations

from codemods.rules.accelerate_launch import launcher_after
from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule


class AccelerateStateBeforeLauncher(Rule):
    """
    ## What it does
    Finds `Accelerator(...)`, `AcceleratorState(...)` or `PartialState(...)` created in the notebook
    process (at top level, or in a notebook function or class called at top level) before
    Accelerate's `notebook_launcher(...)` runs. A launch with `num_processes=1` is left out: it does
    not fork, it calls the function in the notebook process.

    ## Why is this bad?
    Accelerate keeps its process state in class-level dictionaries (`accelerate/state.py`:
    `PartialState._shared_state`, `AcceleratorState._shared_state`), and the forked training
    processes inherit them. Accelerate 1.15's `notebook_launcher` (`accelerate/launchers.py`)
    therefore raises `ValueError: To launch a multi-device training from your notebook, the
    `Accelerator` should only be initialized inside your training function. Restart your notebook
    and make sure no cells initializes an `Accelerator`.` when `AcceleratorState._shared_state` is
    not empty, which `Accelerator()` and `AcceleratorState()` do; the kernel has to be restarted.
    `PartialState()` alone passes that check, but each training process then inherits its
    one-process state: its `Accelerator()` reports `num_processes=1` and `DistributedType.NO`
    (measured with `debug_launcher(..., num_processes=2)`), so the processes train separately
    instead of together. In the notebook process, `accelerator.device` is also the first GPU, and
    moving anything there breaks the fork (NBR101).

    ## Example
    ```python
    from accelerate import Accelerator, notebook_launcher

    accelerator = Accelerator(mixed_precision="fp16")

    def training_function():
        model = accelerator.prepare(build_model())
        ...

    notebook_launcher(training_function, num_processes=2)
    ```

    ## Use instead
    ```python
    from accelerate import Accelerator, notebook_launcher

    def training_function():
        accelerator = Accelerator(mixed_precision="fp16")  # first, inside the launched function
        model = accelerator.prepare(build_model())
        ...

    notebook_launcher(training_function, num_processes=2)
    ```

    ## Fix safety
    Safe where offered: a top-level `accelerator = Accelerator(...)` line that only the launched
    function reads moves into that function, as its first statement (after a docstring), so each
    training process creates its own. When other top-level code reads it too (`.to(accelerator.
    device)`), the fix refuses and says which cell. A top-level notebook with no launcher at all
    is NBR305's fix.
    """

    code = "NBR103"
    name = "accelerate-state-before-launcher"
    summary = "`Accelerator()` (or Accelerate state) is created in the notebook process before `notebook_launcher`"
    applicability = Applicability.SAFE
    fix_availability = FixAvailability.SOMETIMES
    contexts = ("notebook", "script")
    context_reason = "`notebook_launcher` refuses an existing Accelerate state in a script too; a script should not use it at all (NBR601)"
    fix_title = "Create the `Accelerator` inside the training function"

    VALID = [
        # The already-safe layout of Accelerate's notebook tutorial.
        """
import torch
from accelerate import Accelerator, notebook_launcher
from torch.utils.data import DataLoader

def training_function():
    accelerator = Accelerator(mixed_precision="fp16")
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 4)), batch_size=8)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for (x,) in loader:
        loss = model(x).sum()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    accelerator.wait_for_everyone()
# %%
notebook_launcher(training_function, num_processes=2)
""",
        # After the launch, or with a launch that does not fork.
        """
from accelerate import Accelerator, notebook_launcher
notebook_launcher(training_function, num_processes=2)
# %%
accelerator = Accelerator()
notebook_launcher(evaluate, num_processes=1)
""",
        # No launcher: NBR305's business, not this rule's.
        """
from accelerate import Accelerator
accelerator = Accelerator()
""",
    ]
    INVALID = [
        Invalid(
            """
from accelerate import Accelerator, notebook_launcher
accelerator = Accelerator()
# %%
def training_function():
    ...

notebook_launcher(training_function, num_processes=2)
""",
            at=(1, 2, 15),
            message_contains="should only be initialized inside your training function",
        ),
        Invalid(
            """
import accelerate
from accelerate.state import PartialState
state = PartialState()
accelerate.notebook_launcher(train, num_processes=2)
""",
            at=(1, 3, 9),
            message_contains="num_processes=1",
        ),
        # Through a notebook function called at top level.
        Invalid(
            """
from accelerate import Accelerator as Acc
from accelerate import notebook_launcher

def setup():
    return Acc(gradient_accumulation_steps=2)

acc = setup()
notebook_launcher(train, args=(acc,), num_processes=4)
""",
            at=(1, 7, 7),
            message_contains="`setup()`",
        ),
    ]

    def check(self, facts):
        for state in facts.accelerate_states:
            lp = launcher_after(facts, state)
            if lp is None:
                continue
            via = f"`{state.via}()` creates " if state.via else ""
            made = f"{via}`{state.what}()`" if via else f"`{state.what}()` is created"
            if state.what == "PartialState":
                why = ("each training process inherits its one-process state (`num_processes=1`, not distributed) "
                       "and trains on its own")
            else:
                why = ("Accelerate refuses to launch: \"the `Accelerator` should only be initialized inside your "
                       "training function\"")
            yield Finding(state.node, f"{made} in the notebook process before `notebook_launcher`; {why}; create it first thing inside the launched function")
