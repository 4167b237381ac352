"""Errors a user can cause: each becomes one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations


class NotebookError(Exception):
    """A notebook that nbrefactor cannot read, understand or write.

    The message names the file and, where it helps, the cell (1-based over all cells) and line.
    """

    def __init__(self, path: object, message: str, *, cell: int | None = None, line: int | None = None):
        self.path = str(path)
        self.message = message
        self.cell = cell
        self.line = line
        super().__init__(self.one_line())

    def __reduce__(self):
        """Picklable, so an error found in a worker process reaches the CLI intact."""
        return (self.__class__, (self.path, self.message), {"cell": self.cell, "line": self.line})

    def one_line(self) -> str:
        where = self.path
        if self.cell is not None:
            where += f":cell {self.cell}"
            if self.line is not None:
                where += f":{self.line}"
        return f"{where}: {self.message}"


class NotANotebook(NotebookError):
    """The file is readable but is not a notebook nbrefactor handles (skipped with a note, not an error)."""


class OverLimit(NotebookError):
    """The notebook is beyond a configured limit (size, cells, lines, nesting, time): it is skipped
    with this error rather than worked on without bound. The message says which limit and how to
    raise it."""
