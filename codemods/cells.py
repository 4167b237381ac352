"""Cell-aware editing of a notebook module's top-level statements.

A notebook's cells are marked by `# %%` comment lines at column 0 (nbrefactor's own
`# %% nbrefactor-cell N`, or jupytext's `# %%` in a `.py` percent notebook). libcst keeps such a
line in the `leading_lines` of the first statement of the cell. A codemod that moves or removes that
statement must leave the marker where it was, or the cell boundary moves with it (and markdown
cells, which live between markers, would end up inside a function). Every structural codemod edits
the body through `rebuild`, which keeps markers in place and lets each statement's own comments
travel with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import libcst as cst

MARKER_LINE = re.compile(r"^#\s?%%")
# nbrefactor's own marker, numbered by the cell's index among all cells (`new` for a new cell).
NUMBERED_MARKER = re.compile(r"^# %% nbrefactor-cell (\d+|new)[ \t]*$")


def cell_after(comment: str, current: int, plain: bool = True) -> int:
    """The cell index that a comment line starts, or `current` when it starts none: nbrefactor's
    numbered markers say it; jupytext's plain `# %%` markers (in a module that has no numbered
    ones: `plain`) count on from the previous cell."""
    m = NUMBERED_MARKER.match(comment)
    if m:
        return int(m.group(1)) if m.group(1) != "new" else current + 1
    return current + 1 if plain and MARKER_LINE.match(comment) else current
# A magic or shell escape that jupytext commented out (`# %env A=1`, `# !pip install x`).
COMMENTED_MAGIC = re.compile(r"^#\s?[%!]")


def is_marker(line: cst.EmptyLine) -> bool:
    return line.comment is not None and MARKER_LINE.match(line.comment.value) is not None


def _stays(line: cst.EmptyLine) -> bool:
    return line.comment is not None and COMMENTED_MAGIC.match(line.comment.value) is not None


def split_leading_lines(stmt: cst.CSTNode) -> tuple[list[cst.EmptyLine], list[cst.EmptyLine]]:
    """(cell part, own part): everything up to the last cell marker (or commented magic, which
    belongs to the cell, not to the code after it) stays with the cell; the comments after it
    belong to the statement and travel with it."""
    lines = list(getattr(stmt, "leading_lines", ()))
    last = max((i for i, line in enumerate(lines) if _stays(line)), default=-1)
    return lines[: last + 1], lines[last + 1 :]


def without_cell_part(stmt: cst.BaseStatement) -> cst.BaseStatement:
    """The statement as it travels: its own comments, no cell markers, and blank lines that will
    not pick up indentation (trailing whitespace) inside the block it moves into."""
    _, own = split_leading_lines(stmt)
    own = [line.with_changes(indent=False) if line.comment is None else line for line in own]
    return stmt.with_changes(leading_lines=own)


def first_in_block(stmts: list[cst.BaseStatement]) -> list[cst.BaseStatement]:
    """A block's statements without blank lines before the first one."""
    if not stmts:
        return stmts
    first = stmts[0]
    lines = list(getattr(first, "leading_lines", ()))
    while lines and lines[0].comment is None:
        lines.pop(0)
    return [first.with_changes(leading_lines=lines), *stmts[1:]]


@dataclass
class Edit:
    """What happens to one top-level statement: kept, removed (moved elsewhere), or replaced."""

    replace_with: Sequence[cst.BaseStatement] | None = None
    remove: bool = False


@dataclass
class BodyPlan:
    edits: dict[int, Edit] = field(default_factory=dict)  # by statement index

    def remove(self, index: int) -> None:
        self.edits[index] = Edit(remove=True)

    def replace(self, index: int, statements: Sequence[cst.BaseStatement]) -> None:
        self.edits[index] = Edit(replace_with=list(statements))

    def __bool__(self) -> bool:
        return bool(self.edits)


def rebuild(module: cst.Module, plan: BodyPlan) -> cst.Module:
    """Apply `plan` to the module's top-level statements, keeping every cell marker in place.

    A removed statement leaves its cell part behind; it is given to the next statement that stays
    (or to the module footer), so the cell it opened is still there, possibly empty.
    """
    carry: list[cst.EmptyLine] = []
    body: list[cst.BaseStatement] = []
    for index, stmt in enumerate(module.body):
        edit = plan.edits.get(index)
        if edit is None:
            if carry:
                stmt = stmt.with_changes(leading_lines=[*carry, *stmt.leading_lines])
                carry = []
            body.append(stmt)
            continue
        cell_part, _ = split_leading_lines(stmt)
        carry.extend(cell_part)
        if edit.replace_with:
            first, *rest = edit.replace_with
            first = without_cell_part(first)  # the cell part is the one carried, not a copy
            first = first.with_changes(leading_lines=[*carry, *first.leading_lines])
            carry = []
            body.extend([first, *rest])
    footer = [*carry, *module.footer]
    return module.with_changes(body=body, footer=footer)
