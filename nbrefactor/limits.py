"""How much work nbrefactor takes on for one notebook, and what it does beyond that.

`check` and `fix` run on every commit (pre-commit), on every notebook of a repository (CI, on
strangers' pull requests) and on whatever is open in JupyterLab. One file must never hang them or
eat the machine, so each notebook is measured before it is analysed, and a notebook beyond a limit
is skipped with one `error:` line that names the limit and how to raise it (exit 2: a skipped file
is never reported as clean). The limits, with their `[tool.nbrefactor]` keys:

    max-file-size    64 MiB    bytes of the notebook file
    max-cells        50000     cells in the notebook
    max-cell-lines   50000     lines in one code cell
    max-line-length  100000    characters in one line of code
    max-nesting      200       depth of the syntax tree of one code cell (`a.b.c...`, `1+1+...`)
    time-budget      120       seconds of work on one notebook (0: no budget)

Within them the work is linear in the size of the notebook (benchmarks/scaling.py prints the
series), so the largest notebook accepted costs seconds, not minutes. The nesting limit is what
lets the analysis recurse safely: the work on a notebook runs in a thread whose stack and recursion
limit are sized for it, and Python's own `RecursionError`/`MemoryError` on a deeper input becomes
the same one-line error. A limit of 0 switches that limit off.
"""

from __future__ import annotations

import ast
import sys
import threading
from dataclasses import dataclass, replace

from nbrefactor.errors import NotebookError, OverLimit

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    file_bytes: int = 64 * MiB
    cells: int = 50_000
    cell_lines: int = 50_000
    line_length: int = 100_000
    nesting: int = 200
    seconds: float = 120.0


KEYS = {
    "max-file-size": "file_bytes",
    "max-cells": "cells",
    "max-cell-lines": "cell_lines",
    "max-line-length": "line_length",
    "max-nesting": "nesting",
    "time-budget": "seconds",
}
_KEY_OF = {attr: key for key, attr in KEYS.items()}

_active = Limits()


def active() -> Limits:
    return _active


def configure(limits: Limits) -> None:
    """Use `limits` in this process (worker processes forked later inherit them)."""
    global _active
    _active = limits


def from_table(table: dict, where: str) -> Limits:
    """Limits from `[tool.nbrefactor]` keys (the others are ignored here); a bad value is an error."""
    changes = {}
    for key, attr in KEYS.items():
        if key not in table:
            continue
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (attr != "seconds" and not float(value).is_integer()):
            raise NotebookError(where, f"[tool.nbrefactor] {key} must be a non-negative {'number' if attr == 'seconds' else 'whole number'} (0: no limit)")
        changes[attr] = float(value) if attr == "seconds" else int(value)
    return replace(Limits(), **changes)


def _over(what: str, found: str, attr: str, limit: int | str) -> str:
    shown = f"{limit:,}" if isinstance(limit, int) else limit
    return f"skipped: too large: {what} {found} (at most {shown}; raise {_KEY_OF[attr]} in [tool.nbrefactor])"


# --- measuring a notebook before any analysis -----------------------------------------------


def check_file_size(path: str, size: int) -> None:
    limit = _active.file_bytes
    if limit and size > limit:
        raise OverLimit(path, _over("the file is", f"{size / MiB:,.1f} MiB", "file_bytes", f"{limit / MiB:g} MiB"))


def check_cells(path: str, cells) -> None:
    """Cell count, lines per code cell and line length: one pass over the text."""
    limits = _active
    if limits.cells and len(cells) > limits.cells:
        raise OverLimit(path, _over("the notebook has", f"{len(cells):,} cells", "cells", limits.cells))
    for cell in cells:
        if cell.cell_type != "code":
            continue
        source = cell.source
        if limits.cell_lines:
            n = source.count("\n") + (not source.endswith("\n"))  # "a\nb\n" is two lines
            if n > limits.cell_lines:
                raise OverLimit(path, _over("the cell has", f"{n:,} lines", "cell_lines", limits.cell_lines), cell=cell.index + 1)
        if limits.line_length and len(source) > limits.line_length:
            for row, line in enumerate(source.split("\n"), 1):
                if len(line) > limits.line_length:
                    raise OverLimit(path, _over("the line has", f"{len(line):,} characters", "line_length", limits.line_length),
                                    cell=cell.index + 1, line=row)


def too_deep(path: str, cell: int | None, line: int | None = None) -> OverLimit:
    if _active.nesting:
        message = f"skipped: the code is nested too deeply (deeper than {_active.nesting:,} levels; raise max-nesting in [tool.nbrefactor])"
    else:
        message = "skipped: the code is nested too deeply for Python's parser"
    return OverLimit(path, message, cell=cell, line=line)


_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


def deepest_line(tree: ast.AST, source: str | None = None) -> int | None:
    """The line (1 when unknown) of a node deeper than the nesting limit in `tree`, or None when
    the tree is within the limit.

    Walked iteratively (the tree may be far deeper than Python's recursion limit), and only where
    depth is possible: every level of an expression costs at least one character (`-x`, `a.b`,
    `[x]`), so a simple statement shorter than the depth it has left is not walked. With the
    cell's `source`, statements are measured in it; without it, everything is walked."""
    limit = _active.nesting
    if not limit:
        return None
    measure = _span_measure(source) if source is not None else None
    statements = [(tree, 1)]
    while statements:
        node, depth = statements.pop()
        if depth > limit:
            return getattr(node, "lineno", 1)
        compound = False
        for name, value in ast.iter_fields(node):
            if name in _BODIES and isinstance(value, list):
                compound = True
                statements.extend((child, depth + 1) for child in value)
        if not compound and measure is not None and getattr(node, "end_lineno", None) is not None:
            if measure(node) + depth + 4 < limit:
                continue  # too short to be too deep
        for name, value in ast.iter_fields(node):
            if name in _BODIES and isinstance(value, list):
                continue
            for child in value if isinstance(value, list) else (value,):
                if isinstance(child, ast.AST):
                    line = _walk_deeper_than(child, limit - depth, getattr(node, "lineno", 1))
                    if line is not None:
                        return line
    return None


def _span_measure(source: str):
    """A function giving a node's length in UTF-8 bytes (the unit of `col_offset`)."""
    starts = [0]
    total = 0
    for line in source.encode("utf-8").split(b"\n"):
        total += len(line) + 1
        starts.append(total)

    def measure(node) -> int:
        return starts[node.end_lineno - 1] + node.end_col_offset - starts[node.lineno - 1] - node.col_offset

    return measure


def _walk_deeper_than(root: ast.AST, allowed: int, line: int) -> int | None:
    stack = [(root, 1, getattr(root, "lineno", line))]
    children = ast.iter_child_nodes
    while stack:
        node, depth, line = stack.pop()
        line = getattr(node, "lineno", line)
        if depth > allowed:
            return line
        depth += 1
        stack.extend((child, depth, line) for child in children(node))
    return None


# --- running the work on one notebook -------------------------------------------------------


class _OutOfTime(BaseException):
    """Raised inside the worker thread when the time budget runs out (a BaseException, so the
    analysis's own `except Exception` cannot swallow it)."""


_STACK_BYTES = 256 * MiB  # address space, touched only as deep as the work goes


def bounded(path: str, work, *args, in_thread: bool = True):
    """`work(*args)` for the notebook at `path`, within the limits: in a thread whose stack and
    recursion limit fit the nesting limit, stopped when it runs past the time budget. Returns what
    `work` returns; raises what it raises, `OverLimit` for the budget, and the nesting error for
    Python's RecursionError. `in_thread=False` works in the calling thread, without a time budget
    (a process of its own whose limits its parent enforces: the server's workers)."""
    limits = _active
    box: dict = {}

    def run():
        try:
            box["value"] = work(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = err

    previous_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous_limit, 2000 + 50 * (limits.nesting or 200)))
    previous_digits = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else None
    if previous_digits is not None:
        # An integer literal as long as a line may be is Python; CPython's default (4,300 digits)
        # would call the cell "not Python". Converting one literal is quadratic in its length,
        # which the line limit bounds.
        sys.set_int_max_str_digits(0 if not limits.line_length else max(limits.line_length, 4300))
    thread = _start(run) if in_thread else None
    if thread is None:
        run()
    try:
        if thread is not None:
            thread.join(limits.seconds or None)
        if thread is not None and thread.is_alive():
            import ctypes  # only to stop a thread that ran past the budget

            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_OutOfTime))
            thread.join(5)
            raise OverLimit(path, f"skipped: the work on it ran past the time budget of {limits.seconds:g} s (raise time-budget in [tool.nbrefactor])")
    finally:
        sys.setrecursionlimit(previous_limit)
        if previous_digits is not None:
            sys.set_int_max_str_digits(previous_digits)
    err = box.get("error")
    if err is None:
        return box.get("value")
    if isinstance(err, RecursionError):
        raise too_deep(path, None) from None
    raise err  # a MemoryError too: the caller knows its memory limit (the CLI, the server's worker)


def _start(run) -> threading.Thread | None:
    previous_stack = threading.stack_size()
    try:
        threading.stack_size(_STACK_BYTES)
    except (ValueError, RuntimeError):  # a platform that will not: the default stack
        pass
    thread = threading.Thread(target=run, name="nbrefactor-notebook", daemon=True)
    try:
        thread.start()
    except (RuntimeError, MemoryError):  # no room for the stack: work in the calling thread
        return None
    finally:
        threading.stack_size(previous_stack)
    return thread
