"""NBR104: `bitsandbytes` imported in the notebook process before `notebook_launcher`."""

from __future__ import annotations

from codemods.rules.accelerate_launch import forking_launchers
from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule


class BitsandbytesBeforeLauncher(Rule):
    """
    ## What it does
    Finds `import bitsandbytes` (or `from bitsandbytes... import ...`) run at top level before
    Accelerate's `notebook_launcher(...)` (a launch with `num_processes=1` does not fork and is left
    out).

    ## Why is this bad?
    bitsandbytes initialises the GPU when it is imported, which breaks the fork. Accelerate 1.15's
    `notebook_launcher` (`accelerate/launchers.py`) checks `sys.modules` before forking
    (`are_libraries_initialized("bitsandbytes")`) and raises `RuntimeError: Could not start
    distributed process. Libraries known to initialize device upon import have been imported
    already. Please keep these imports inside your training function to try and help with this:
    * `bitsandbytes``. Once imported, the module stays in `sys.modules`: the kernel has to be
    restarted.

    ## Example
    ```python
    import bitsandbytes as bnb
    from accelerate import notebook_launcher

    def training_function():
        optimizer = bnb.optim.Adam8bit(model.parameters())
        ...

    notebook_launcher(training_function, num_processes=2)
    ```

    ## Use instead
    ```python
    from accelerate import notebook_launcher

    def training_function():
        import bitsandbytes as bnb
        optimizer = bnb.optim.Adam8bit(model.parameters())
        ...

    notebook_launcher(training_function, num_processes=2)
    ```

    ## Fix safety
    No automatic fix: the names the import binds may be used at top level too (type hints,
    configuration); move the import into the training function by hand.
    """

    code = "NBR104"
    name = "bitsandbytes-before-launcher"
    summary = "`bitsandbytes` is imported in the notebook process before `notebook_launcher`"
    applicability = Applicability.NONE
    fix_availability = FixAvailability.NONE
    contexts = ("notebook", "script")
    context_reason = "`notebook_launcher` refuses bitsandbytes imported first in a script too; a script should not use it at all (NBR601)"

    VALID = [
        """
from accelerate import notebook_launcher

def training_function():
    import bitsandbytes as bnb
    optimizer = bnb.optim.Adam8bit(params)

notebook_launcher(training_function, num_processes=2)
""",
        # Imported after the launch, or with no launch at all.
        """
from accelerate import notebook_launcher
notebook_launcher(training_function, num_processes=2)
import bitsandbytes
""",
    ]
    INVALID = [
        Invalid(
            """
import torch
import bitsandbytes as bnb
# %%
from accelerate import notebook_launcher
notebook_launcher(training_function, num_processes=2)
""",
            at=(1, 2, 1),
            message_contains="inside the training function",
        ),
        Invalid(
            """
from bitsandbytes.optim import Adam8bit
from accelerate import notebook_launcher
notebook_launcher(training_function, args=(model,), num_processes=2)
""",
            at=(1, 1, 1),
        ),
    ]

    def check(self, facts):
        last = max((lp.statement for lp in forking_launchers(facts)), default=None)
        if last is None:
            return
        for imp in facts.bitsandbytes_imports:
            if imp.statement <= last:
                yield Finding(imp.node, "`bitsandbytes` is imported in the notebook process before `notebook_launcher`, which refuses to launch (\"Libraries known to initialize device upon import have been imported already\"); import it inside the training function")
