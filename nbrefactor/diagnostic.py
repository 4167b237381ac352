"""A finding as printed: its own module, light to import, so that printing results read from the
cache (nbrefactor/cache.py) loads no parser."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Diagnostic:
    code: str
    name: str
    message: str
    path: str
    cell: int  # 1-based over all cells
    row: int  # 1-based inside the cell
    column: int  # 1-based
    end_row: int
    end_column: int
    applicability: str  # the rule's declared kind until `nbrefactor.labels.label` asks the fixer
    fix_title: str | None
    fix_needs: str | None = None  # an option the fix needs besides --unsafe-fixes (`--devices N`)
    context: str = "notebook"  # "script": a plain `.py` file, one cell, placed as `path:row:col`

    def sort_key(self):
        return (self.path, self.cell, self.row, self.column, self.code)
