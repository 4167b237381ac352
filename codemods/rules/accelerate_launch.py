"""What the Accelerate rules (NBR103, NBR104, NBR403) share: Accelerate's `notebook_launcher` launch
points, and whether something runs in the notebook process before one of them.

`notebook_launcher(fn, num_processes=1)` does not fork: it calls `fn` in the notebook process
(accelerate 1.15, `accelerate/launchers.py`, the `else` branch of `if num_processes > 1`), and
checks nothing, so launches with a literal `num_processes=1` are left out.
"""

from __future__ import annotations

from typing import Iterator

import libcst as cst

from codemods import names as N
from codemods.facts import LaunchPoint, NotebookFacts, runs_before


def launch_call(lp: LaunchPoint) -> cst.Call:
    """The `notebook_launcher(...)` call itself (inside `lp.via` when a notebook function calls it)."""
    return lp.inner if lp.inner is not None else lp.node


def num_processes(lp: LaunchPoint) -> cst.Arg | None:
    return N.call_arg(launch_call(lp), "num_processes", 2)


def forking_launchers(facts: NotebookFacts) -> Iterator[LaunchPoint]:
    """The `notebook_launcher` calls that may fork (all but a literal `num_processes=1`)."""
    for lp in facts.launches:
        if lp.kind != "notebook_launcher":
            continue
        n = num_processes(lp)
        if n is not None and isinstance(n.value, cst.Integer) and n.value.value == "1":
            continue
        yield lp


def launcher_after(facts: NotebookFacts, use) -> LaunchPoint | None:
    """The first forking `notebook_launcher` that `use` (a record with `node`, `statement`, `via`
    and `inner`, like `CudaUse`) runs before in the notebook process, if any."""
    for lp in forking_launchers(facts):
        if use.statement < lp.statement:
            return lp
        if use.statement != lp.statement:
            continue
        if use.via is not None and use.via == lp.via and use.node is lp.node and lp.inner is not None:
            function = facts.functions.get(use.via)
            if function is not None and runs_before(function.node, use.inner, lp.inner):
                return lp
        elif use.node is not lp.node and runs_before(facts.statements[lp.statement].node, use.node, lp.node):
            return lp
    return None
