"""The diff of a fix, cell by cell: what `fix --diff` prints and what JupyterLab's "Show diff" shows."""

from __future__ import annotations

import difflib

from nbrefactor.fixer import FixResult


def cell_diff(result: FixResult, name: str | None = None) -> str:
    """A unified diff per changed cell, headed `name:cell N` with the cell numbers of the notebook
    before the fix (a script: `name`); cells the fix removed say so."""
    before, after = result.before, result.after
    new_by_key = {c.id or f"#{c.index}": c for c in after.cells}  # ids survive a fix; else positions
    deleted = set(result.deleted_cells)
    out: list[str] = []
    shift = 0
    for c in before.cells:
        if c.number in deleted:
            new_source = ""
            shift += 1
        else:
            new = new_by_key.get(c.id or f"#{c.index - shift}")
            new_source = new.source if new is not None else ""
        if new_source == c.source:
            continue
        label = _label(name or before.path, before, c.number) + (" (removed: its code moved)" if c.number in deleted else "")
        # Lines without their endings: a cell's last line has no newline, and gains one when code
        # is added after it; compared with endings, that unchanged line would show as -/+.
        diff = difflib.unified_diff(c.source.splitlines(), new_source.splitlines(), fromfile=label, tofile=label, lineterm="")
        out.append("".join(line + "\n" for line in diff))
    return "".join(out)


def _label(name: str, notebook, number: int) -> str:
    """`name:cell N`, or `name` for a script (one cell: the diff's rows are the file's lines)."""
    from nbrefactor.checker import context_of

    return name if context_of(notebook) == "script" else f"{name}:cell {number}"
