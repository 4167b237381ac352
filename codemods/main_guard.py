"""`if __name__ == "__main__":` in a notebook: a kernel's `__name__` is "__main__", so the guard is
always true and its body is top-level code. When the body holds what another fix must rewrite (a
launch point, Fabric training, CUDA or data the training needs), the guard is unwrapped first, so
that fix sees top-level statements; a guard around code that is already safe stays as it is.
"""

from __future__ import annotations

import libcst as cst

from codemods import names as N
from codemods.cells import BodyPlan, split_leading_lines
from codemods.facts import NotebookFacts


def _why(facts: NotebookFacts, index: int) -> str | None:
    """The rule code of what in statement `index` another fix must rewrite, or None."""
    launches = [lp for lp in facts.launches if lp.statement == index]
    if any(lp.kind == "fabric.launch" and lp.function is None for lp in launches):
        return "NBR301"
    if any(t.statement == index for t in facts.training):
        return "NBR302"
    last = facts.last_launch
    if last is not None and any(u.statement == index and index <= last for u in facts.cuda):
        return "NBR101"
    if any(d.statement == index for d in facts.data):
        return "NBR201"
    return None


def _unwrapped(guard: cst.If) -> list[cst.BaseStatement] | None:
    """The guard's body as top-level statements, carrying the guard's comments; None when comments
    at the end of its block would have nowhere to go."""
    body = N.guarded_statements(guard)
    block = guard.body
    if isinstance(block, cst.IndentedBlock) and any(line.comment is not None for line in block.footer):
        return None
    _, own = split_leading_lines(guard)
    header = block.header if isinstance(block, cst.IndentedBlock) else block.trailing_whitespace
    moved = list(own)
    if header.comment is not None:
        moved.append(cst.EmptyLine(comment=header.comment))
    first = body[0]
    body[0] = first.with_changes(leading_lines=[*moved, *first.leading_lines])
    return body


def unwrap_main_guard(facts: NotebookFacts) -> tuple[BodyPlan, list[tuple[str, int, str]], list[str]]:
    plan, changes, refused = BodyPlan(), [], []
    for st in facts.statements:
        if not N.is_main_guard(st.node):
            continue
        code = _why(facts, st.index)
        if code is None:
            continue
        body = _unwrapped(st.node)
        if body is None:
            refused.append(f"not rewritten ({code}): the `if __name__ == \"__main__\":` block in cell {st.cell + 1} ends in comments; move them and run fix again")
            continue
        plan.replace(st.index, body)
        changes.append((code, st.cell, '`if __name__ == "__main__":` unwrapped: a kernel always runs its body, which is now top-level code the fix can rewrite'))
    return plan, changes, refused
