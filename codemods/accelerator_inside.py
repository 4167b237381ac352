"""NBR103: an `Accelerator` built at top level and read by the function `notebook_launcher` runs
moves into that function, as its first statement (Accelerate's documented layout: "create the
`Accelerator` as early as possible inside the training function")."""

from __future__ import annotations

import libcst as cst

from codemods.cells import BodyPlan, without_cell_part
from codemods.facts import NotebookFacts


def _single_assignment(node: cst.CSTNode) -> str | None:
    """`name = Accelerator(...)` alone on its line: the name."""
    if isinstance(node, cst.SimpleStatementLine) and len(node.body) == 1 and isinstance(node.body[0], cst.Assign):
        targets = node.body[0].targets
        if len(targets) == 1 and isinstance(targets[0].target, cst.Name):
            return targets[0].target.value
    return None


def _with_first(function: cst.FunctionDef, statement: cst.BaseStatement) -> cst.FunctionDef:
    """`function` with `statement` first in its body (after a docstring)."""
    body = list(function.body.body)
    at = 1 if body and isinstance(body[0], cst.SimpleStatementLine) and isinstance(body[0].body[0], cst.Expr) \
        and isinstance(body[0].body[0].value, (cst.SimpleString, cst.ConcatenatedString)) else 0
    body.insert(at, statement)
    return function.with_changes(body=function.body.with_changes(body=body))


def accelerator_into_function(facts: NotebookFacts) -> tuple[BodyPlan, list[tuple[str, int, str]], list[str]]:
    plan, changes, refused = BodyPlan(), [], []
    launches = [lp for lp in facts.launches if lp.kind == "notebook_launcher" and lp.via is None and lp.function]
    for state in (s for s in facts.accelerate_states if s.via is None and s.what == "Accelerator"):
        st = facts.statements[state.statement]
        name = _single_assignment(st.node)
        launch = next((lp for lp in launches if lp.statement > st.index), None)
        if name is None or launch is None:
            continue
        summary = facts.functions.get(launch.function)
        if summary is None or name not in summary.free_names or not isinstance(summary.node, cst.FunctionDef):
            continue
        readers = [o.index for o in facts.statements if name in o.uses and o.index not in (st.index, launch.statement)
                   and not (isinstance(o.node, cst.FunctionDef) and o.node is summary.node)]
        if readers:
            cells = ", ".join(str(facts.statements[i].cell + 1) for i in readers[:3])
            refused.append(f"not rewritten (NBR103): `{name}` is also read at top level (cell {cells}); build what it makes inside `{launch.function}` first")
            continue
        fn_index = next(o.index for o in facts.statements if o.node is summary.node)
        plan.remove(st.index)
        plan.replace(fn_index, [_with_first(summary.node, without_cell_part(st.node))])
        changes.append(("NBR103", st.cell, f"`{name} = {state.what}(...)` moved into `{launch.function}`, as its first statement"))
    return plan, changes, refused
