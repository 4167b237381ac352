"""NBR403: `notebook_launcher(...)` without `num_processes`."""

from __future__ import annotations

from codemods import names as N
from codemods.rules.accelerate_launch import launch_call, num_processes
from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule


def launchers_without_num_processes(facts):
    """The `notebook_launcher(...)` calls that leave `num_processes` out (and have no `*args` /
    `**kwargs` that may carry it): the rule reports them, `fix --devices N` sets them."""
    seen: set[int] = set()  # a notebook function that launches may be called twice
    for lp in facts.launches:
        call = launch_call(lp)
        if lp.kind == "notebook_launcher" and id(call) not in seen and num_processes(lp) is None and not N.has_star_args(call):
            seen.add(id(call))
            yield call


class LauncherWithoutNumProcesses(Rule):
    """
    ## What it does
    Finds Accelerate's `notebook_launcher(function, ...)` called without `num_processes` (neither
    as a keyword nor as the third positional argument, and no `*args` / `**kwargs` that may carry
    it).

    ## Why is this bad?
    Accelerate 1.15's `notebook_launcher` (`accelerate/launchers.py`) defaults `num_processes` to
    `None` and, outside Colab/Kaggle TPUs and Colab with fewer than two GPUs, raises `ValueError:
    You have to specify the number of devices you would like to use, add `num_processes=...` to
    your call.` Older tutorials relied on a default (all the GPUs); the same notebook fails today.

    ## Example
    ```python
    notebook_launcher(training_function)
    ```

    ## Use instead
    ```python
    notebook_launcher(training_function, num_processes=2)
    ```

    ## Fix safety
    Safe, and only with `--devices N`: the fix adds `num_processes=N`. The call raised before, so
    no result changes; where it did not raise (Colab with fewer than two GPUs) Accelerate ignores
    the count.
    """

    code = "NBR403"
    name = "launcher-without-num-processes"
    summary = "`notebook_launcher(...)` without `num_processes` raises in current Accelerate"
    applicability = Applicability.SAFE
    fix_availability = FixAvailability.ALWAYS
    context_reason = "not scripts: a script should not call `notebook_launcher` at all (NBR601)"
    fix_title = "Pass `num_processes=N` (`nbrefactor fix --devices N`)"

    VALID = [
        """
from accelerate import notebook_launcher
notebook_launcher(training_function, num_processes=2)
notebook_launcher(training_function, (), 2)
notebook_launcher(training_function, **launch_options)
""",
    ]
    INVALID = [
        Invalid(
            """
from accelerate import notebook_launcher
notebook_launcher(training_function, args=(model,))
""",
            at=(1, 2, 1),
            message_contains="num_processes",
        ),
        Invalid(
            """
import accelerate

def main():
    accelerate.notebook_launcher(training_function)
# %%
main()
""",
            at=(1, 4, 5),
        ),
    ]

    def check(self, facts):
        for call in launchers_without_num_processes(facts):
            yield Finding(call, "`notebook_launcher(...)` without `num_processes` raises in current Accelerate (\"You have to specify the number of devices you would like to use\"); pass `num_processes=N`")
