"""NBR603: a script that spawns its training processes, with launching code outside
`if __name__ == "__main__":`."""

from __future__ import annotations

import libcst as cst

from codemods import names as N
from codemods.facts import NotebookFacts, qualified_name
from codemods.rules.base import (
    Applicability,
    Finding,
    FixAvailability,
    Invalid,
    Rule,
    Valid,
)

SPAWN_CALLS = {"torch.multiprocessing.spawn", "torch.multiprocessing.start_processes"}
DEFINITIONS = (cst.FunctionDef, cst.ClassDef)


def _spawn_calls(facts: NotebookFacts, calls) -> list[cst.Call]:
    return [c for c in calls if qualified_name(c.func, facts.env) in SPAWN_CALLS]


def spawns(facts: NotebookFacts) -> bool:
    """Does the script start processes with the spawn (or forkserver) start method?"""
    for c in facts.constructors:
        arg = N.call_arg(c.node, "strategy", 1 if c.kind == "fabric" else None) if c.kind != "ddp_strategy" else N.call_arg(c.node, "start_method")
        value = N.string_value(arg.value) if arg is not None else None
        if value is not None and (value.startswith("ddp_spawn") or (c.kind == "ddp_strategy" and value in ("spawn", "forkserver"))):
            return True
    return bool(facts.start_methods) or any(_spawn_calls(facts, st.calls) for st in facts.statements)


def unguarded_launching_calls(facts: NotebookFacts) -> list[tuple[int, cst.Call]]:
    """(statement, call) for every call outside a `__main__` guard, at top level or in a function
    called at top level, that starts processes or sets the start method, in order."""
    starts = {id(call) for call, _ in facts.start_methods}
    out = []
    for st in facts.statements:
        if N.is_main_guard(st.node):
            continue
        launches = [lp.node for lp in facts.launches if lp.statement == st.index]
        for call in st.calls:
            if id(call) in starts or call in launches or _spawn_calls(facts, [call]):
                out.append((st.index, call))
    return out


def main_guard_plan(facts: NotebookFacts):
    """The top-level statements from the first launching one to the end, as one `__main__`
    guard: (first index, the guard), or None when a definition, an import or a guard follows
    (wrapping it would hide it from the children that import the script)."""
    found = unguarded_launching_calls(facts)
    if not found:
        return None
    first = found[0][0]
    tail = [facts.statements[i].node for i in range(first, len(facts.statements))]
    if any(_defines_for_children(node) for node in tail):
        return None
    from codemods.cells import without_cell_part

    opening = without_cell_part(tail[0])  # the script's cell marker stays before the guard
    tail[0] = opening.with_changes(leading_lines=[])  # its blank lines and comments open the guard
    guard = cst.parse_statement('if __name__ == "__main__":\n    pass\n')
    return first, guard.with_changes(body=guard.body.with_changes(body=tail), leading_lines=opening.leading_lines)


def _defines_for_children(node: cst.CSTNode) -> bool:
    if isinstance(node, DEFINITIONS) or N.is_main_guard(node):
        return True
    return isinstance(node, cst.SimpleStatementLine) and any(isinstance(s, (cst.Import, cst.ImportFrom)) for s in node.body)


class SpawnWithoutMainGuard(Rule):
    """
    ## What it does
    Finds, in a script that starts its processes with the spawn start method
    (`strategy="ddp_spawn"`, `DDPStrategy(start_method="spawn")`, `torch.multiprocessing.spawn`,
    `set_start_method("spawn")`), code that starts processes or sets the start method outside
    `if __name__ == "__main__":`.

    ## Why is this bad?
    A spawned child starts a fresh interpreter and imports the script to find the function it
    runs, so the script's top level runs again in every child. There it starts processes again:
    Python stops it with `RuntimeError: An attempt has been made to start a new process before the
    current process has finished its bootstrapping phase`, and a second `set_start_method` raises
    `RuntimeError: context has already been set`.

    ## Example
    ```python
    trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_spawn")
    trainer.fit(model)
    ```

    ## Use instead
    ```python
    if __name__ == "__main__":
        trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_spawn")
        trainer.fit(model)
    ```

    ## Fix safety
    Safe when nothing but plain statements follows the first one that launches: they move, in
    order, into `if __name__ == "__main__":` at the end of the script, which runs them as before
    when the script is run, and not when a child imports it. No fix when a function, a class or an
    import follows (a child needs it): move the launching code into a guard by hand.
    """

    code = "NBR603"
    name = "spawn-without-main-guard"
    summary = "A script that spawns its processes launches outside `if __name__ == \"__main__\":`"
    applicability = Applicability.SAFE
    fix_availability = FixAvailability.SOMETIMES
    context_reason = "not notebooks: a kernel is never re-imported by the processes it starts"
    fix_title = "Move the launching code into `if __name__ == \"__main__\":`"
    contexts = ("script",)

    VALID = [
        Valid("""
import lightning as L
model = Model()
if __name__ == "__main__":
    trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_spawn")
    trainer.fit(model)
""", context="script"),
        Valid("""
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp")
trainer.fit(model)
""", context="script"),
    ]
    INVALID = [
        Invalid(
            """
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_spawn")
trainer.fit(model)
""",
            at=(1, 3, 1),
            message_contains="bootstrapping phase",
            context="script",
        ),
        Invalid(
            """
import torch.multiprocessing as mp

def worker(rank):
    pass

mp.set_start_method("spawn")
mp.spawn(worker, nprocs=2)
""",
            at=(1, 7, 1),
            message_contains="spawn",
            context="script",
        ),
    ]

    def check(self, facts):
        if not spawns(facts):
            return
        fixable = main_guard_plan(facts) is not None
        how = "" if fixable else "; move it into a function and call that under the guard (a definition or an import follows it)"
        starts = {id(call) for call, _ in facts.start_methods}
        for _, call in unguarded_launching_calls(facts):
            what = "sets the start method (a child running it again: \"context has already been set\")" if id(call) in starts else (
                "starts processes with the spawn start method (a child running it again: \"...before the current process has finished its bootstrapping phase\")")
            yield Finding(call, f"`{N.dotted(call.func) or 'this call'}(...)` {what} outside `if __name__ == \"__main__\":`, and each spawned child re-imports the script and runs its top level{how}")
