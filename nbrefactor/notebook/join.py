"""Notebook <-> one Python module, so libcst parses a notebook once and codemods see every cell.

Each code cell is written behind its own marker line, `# %% nbrefactor-cell <index>`, at column 0.
IPython syntax (line magics, shell escapes, help) that is not Python is swapped, one line for one
line, for a placeholder statement `__nbrefactor_magic_<k>__` at the same indentation, so rows and
columns stay the notebook's own and a moved magic keeps its new indentation. A cell that still does
not parse is kept out of the module (its marker stays, its body is empty) and restored verbatim.

`JoinedNotebook.split` reverses this and refuses a module whose markers were lost, duplicated,
reordered or indented: a codemod that breaks cell boundaries must fail, never corrupt a notebook.
"""

from __future__ import annotations

import ast
import contextlib
import re
import warnings
from dataclasses import dataclass, field

import libcst as cst

from codemods.cells import NUMBERED_MARKER
from nbrefactor.notebook.model import Notebook

MARKER_PREFIX = "# %% nbrefactor-cell "
MARKER = NUMBERED_MARKER  # codemods/cells.py: the codemods read it too
_ANY_MARKER = re.compile(r"^[ \t]*# %% nbrefactor-cell\b")
_PLACEHOLDER = re.compile(r"^([ \t]*)__nbrefactor_magic_(\d+)__[ \t]*$")

# Lines IPython turns into calls before Python sees them.
_MAGIC_LINE = re.compile(
    r"""^[ \t]*(
        [%!?]                                   # %magic, %%cellmagic, !shell, ?help
      | [\w.]+[ \t]*\?\??[ \t]*$                # obj? / obj??
      | [\w.,()\[\] \t]+=[ \t]*[%!]             # var = !ls / var = %time f()
    )""",
    re.VERBOSE,
)

# Cell magics whose body is Python: the first line is escaped, the body is analysed.
PYTHON_CELL_MAGICS = {"time", "timeit", "capture", "prun", "debug", "pypy", "python", "python3", "writefile"}


@dataclass
class CellInModule:
    """Where one code cell sits in the joined module."""

    index: int  # the cell's index among all cells
    first_line: int  # 1-based module line of the cell's first source line
    n_lines: int
    opaque: bool = False  # not Python: kept out of the module, restored verbatim
    parse_error: str | None = None
    parse_error_line: int | None = None
    tree: ast.Module | None = field(default=None, repr=False, compare=False)  # CPython's, when asked to keep it


@dataclass
class JoinedNotebook:
    notebook: Notebook
    code: str
    cells: list[CellInModule]
    magics: list[str] = field(default_factory=list)  # placeholder k -> original line, indentation stripped
    module: cst.Module | None = None  # the parsed module, when join already had to parse it

    @property
    def opaque_cells(self) -> list[CellInModule]:
        return [c for c in self.cells if c.opaque]

    def locate(self, line: int) -> tuple[int, int]:
        """Module line (1-based) -> (cell index, 1-based row inside the cell)."""
        lo, hi = 0, len(self.cells) - 1
        found = None
        while lo <= hi:
            mid = (lo + hi) // 2
            if self.cells[mid].first_line <= line:
                found = self.cells[mid]
                lo = mid + 1
            else:
                hi = mid - 1
        if found is None:
            raise ValueError(f"line {line} is before the first cell")
        return found.index, line - found.first_line + 1

    def split(self, code: str) -> dict[int, str]:
        """New sources by cell index from a (transformed) module; raises `CellBoundaryError`."""
        lines = code.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the newline that ends the module
        order: list[int] = []
        bodies: dict[int, list[str]] = {}
        current: int | None = None
        for line in lines:
            m = MARKER.match(line)
            if m:
                if m.group(1) == "new":
                    raise CellBoundaryError("new cells are not supported here")
                current = int(m.group(1))
                if current in bodies:
                    raise CellBoundaryError(f"cell marker {current} appears twice")
                order.append(current)
                bodies[current] = []
                continue
            if _ANY_MARKER.match(line):
                raise CellBoundaryError(f"a cell marker was moved inside a block: {line.strip()!r}")
            if current is None:
                if line.strip():
                    raise CellBoundaryError("code was placed before the first cell marker")
                continue
            bodies[current].append(line)
        expected = [c.index for c in self.cells]
        if order != expected:
            raise CellBoundaryError(f"cell markers lost or reordered (expected {expected}, got {order})")
        out: dict[int, str] = {}
        by_index = {c.index: c for c in self.cells}
        for index, body in bodies.items():
            original = self.notebook.cells[index].source
            if by_index[index].opaque:
                out[index] = original
                continue
            text = "\n".join(self._restore(line) for line in body)
            out[index] = original if text == original else _tidy(text)
        return out

    def _restore(self, line: str) -> str:
        m = _PLACEHOLDER.match(line)
        if not m:
            return line
        return m.group(1) + self.magics[int(m.group(2))]


class CellBoundaryError(RuntimeError):
    """A transform moved, dropped or duplicated a cell marker."""


def _tidy(text: str) -> str:
    """A changed cell: no trailing blank lines (Jupyter's convention)."""
    return text.rstrip("\n ")


class _TooDeep(Exception):
    def __init__(self, line: int | None):
        self.line = line


def _parses(source: str) -> tuple[str | None, int | None, ast.Module | None]:
    """(error, error line, None) for a cell's source that is not Python, (None, None, its `ast`)
    for one that is; raises `_TooDeep` when it is Python nested deeper than the nesting limit (or
    than CPython's parser takes)."""
    from nbrefactor.limits import deepest_line

    try:
        with warnings.catch_warnings():  # the user's invalid escapes are not our business
            warnings.simplefilter("ignore")
            tree = compile(source, "<cell>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except (SyntaxError, ValueError) as err:  # ValueError: null bytes
        return getattr(err, "msg", str(err)), getattr(err, "lineno", None), None
    except (RecursionError, MemoryError):  # CPython's parser: "too complex", or its stack overflowed
        raise _TooDeep(None) from None
    line = deepest_line(tree, source)
    if line is not None:
        raise _TooDeep(line)
    return None, None, tree


def _escape(source: str, magics: list[str]) -> str:
    """Swap each IPython-only line for a placeholder statement (same line count, same indentation)."""
    lines = source.split("\n")
    out: list[str] = []
    continuing = False
    for i, line in enumerate(lines):
        first_cell_magic = i == 0 and line.startswith("%%")
        if continuing or _MAGIC_LINE.match(line) or first_cell_magic or _ANY_MARKER.match(line):
            indent = line[: len(line) - len(line.lstrip(" \t"))]
            out.append(f"{indent}__nbrefactor_magic_{len(magics)}__")
            magics.append(line[len(indent) :])
            continuing = line.rstrip().endswith("\\")
        else:
            out.append(line)
    return "\n".join(out)


def _cell_magic(source: str) -> str | None:
    if source.startswith("%%"):
        return source[2:].split(None, 1)[0] if len(source) > 2 else ""
    return None


def join(notebook: Notebook, *, for_reading: bool = False) -> JoinedNotebook:
    """One Python module for the notebook's code cells (see the module docstring).

    `for_reading`: the caller only reads the code (`check`): each cell keeps the `ast` the join
    made of it (`codemods.fast_tree` builds the analysis's tree from them), and libcst does not
    parse the module (a cell libcst would reject is then not made opaque here)."""
    global _last_prepared
    parts: list[str] = []
    cells: list[CellInModule] = []
    magics: list[str] = []
    line = 1
    known, prepared = ({} if for_reading else _last_prepared), {}
    for cell in notebook.code_cells:
        parts.append(f"{MARKER_PREFIX}{cell.index}\n")
        line += 1
        try:
            body, info = _prepare_known(cell.source, magics, known, prepared)
        except _TooDeep as deep:
            from nbrefactor.limits import too_deep

            raise too_deep(notebook.path, cell.index + 1, deep.line) from None
        info.index, info.first_line = cell.index, line
        if body:
            body += "\n"
        parts.append(body)
        info.n_lines = body.count("\n")
        line += info.n_lines
        cells.append(info)
    joined = JoinedNotebook(notebook, "".join(parts), cells, magics)
    if not for_reading:
        _last_prepared = prepared
        parse_module(joined)
    return joined


# The cells of the last join that was not `for_reading`, as `_prepare_cell` made them (the fixer
# joins the notebook again after each fix, and a fix changes a few cells): (source, magics before
# it, nesting limit) -> (body, opaque, parse error, its line, the magics it added). Only that
# join's cells are kept.
_last_prepared: dict[tuple[str, int, int], tuple] = {}


def _prepare_known(source: str, magics: list[str], known: dict, prepared: dict) -> tuple[str, CellInModule]:
    """`_prepare_cell`, taken from `known` where the same cell was prepared after as many magics;
    each result is recorded in `prepared` (the trees are not kept: only a join `for_reading`
    needs them, and it records nothing)."""
    from nbrefactor.limits import active

    key = (source, len(magics), active().nesting)  # the nesting limit decides whether a cell is too deep
    hit = known.get(key)
    if hit is not None:
        body, opaque, error, error_line, added = hit
        magics.extend(added)
        info = CellInModule(index=-1, first_line=-1, n_lines=0, opaque=opaque, parse_error=error, parse_error_line=error_line)
    else:
        before = len(magics)
        body, info = _prepare_cell(source, magics)
        hit = (body, info.opaque, info.parse_error, info.parse_error_line, tuple(magics[before:]))
    prepared[key] = hit
    return body, info


def _prepare_cell(source: str, magics: list[str]) -> tuple[str, CellInModule]:
    info = CellInModule(index=-1, first_line=-1, n_lines=0)
    magic = _cell_magic(source)
    if magic is not None and magic not in PYTHON_CELL_MAGICS:
        info.opaque, info.parse_error = True, f"cell magic %%{magic}: not Python"
        return "", info
    if "\r" in source.replace("\r\n", ""):
        info.opaque, info.parse_error = True, "bare carriage returns in the source"
        return "", info
    err, err_line, info.tree = _parses(source)
    if info.tree is not None:
        return source, info
    escaped = _escape(source, magics)
    err2, err_line2, info.tree = _parses(escaped)
    if info.tree is not None:
        return escaped, info
    info.opaque, info.parse_error, info.parse_error_line = True, err2 or err, err_line2 or err_line
    return "", info


_parsed: dict[str, cst.Module] = {}  # code -> its module, while `parsed_as` holds one


@contextlib.contextmanager
def parsed_as(code: str, module: cst.Module):
    """Within this block, a notebook that joins to exactly `code` takes `module` instead of a new
    parse (the fixer's next pass: `module` is what the codemod built, printing as `code`). Only a
    module in which no node object appears twice is taken: the analysis tells nodes apart by
    identity. Outside the block nothing is kept."""
    if _one_node_per_place(module):
        _parsed[code] = module
    try:
        yield
    finally:
        _parsed.pop(code, None)


def _one_node_per_place(module: cst.Module) -> bool:
    from codemods.walk import walk

    seen: set[int] = set()
    for node in walk(module):
        if id(node) in seen:
            return False
        seen.add(id(node))
    return True


def parse_module(joined: JoinedNotebook) -> None:
    """libcst's module for a join made `for_reading` (its cells' trees are dropped)."""
    for info in joined.cells:
        info.tree = None
    _make_unparsable_cells_opaque(joined)


def _make_unparsable_cells_opaque(joined: JoinedNotebook) -> None:
    """libcst and CPython disagree on a few corners; a cell libcst rejects is made opaque."""
    known = _parsed.get(joined.code)
    if known is not None:
        joined.module = known
        return
    try:
        joined.module = cst.parse_module(joined.code)
        return
    except cst.ParserSyntaxError:
        pass
    lines = joined.code.split("\n")  # once: a split per cell was quadratic in the number of cells
    for info in joined.cells:
        if info.opaque or info.n_lines == 0:
            continue
        start = info.first_line - 1
        body = "\n".join(lines[start : start + info.n_lines])
        try:
            cst.parse_module(body + "\n")
        except cst.ParserSyntaxError as err:
            info.opaque, info.parse_error, info.parse_error_line = True, err.message, err.raw_line
    # Rebuild the text without the opaque bodies, keeping every cell's line bookkeeping right.
    parts: list[str] = []
    line = 1
    for info in joined.cells:
        parts.append(f"{MARKER_PREFIX}{info.index}\n")
        line += 1
        body = [] if info.opaque else lines[info.first_line - 1 : info.first_line - 1 + info.n_lines]
        info.first_line, info.n_lines = line, len(body)
        parts.extend(b + "\n" for b in body)
        line += len(body)
    joined.code = "".join(parts)
