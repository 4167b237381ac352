"""`%nbrefactor check | fix | status`: the project's checker and fixer on the notebook being run.

What is checked: the notebook file when the kernel knows it (VS Code's `__vsc_ipynb_file__`,
Jupyter Server's `JPY_SESSION_NAME`), as last saved; otherwise the cells run so far in this kernel
(`In[1]`, `In[2]`, ...: cell N of that history is `In [N]`). The checker and fixer (libcst) are
imported when the magic runs, never when the extension loads. Nothing is written: `fix` prints the
diff and the fixed cells, and `fix --load [N]` puts a fixed cell into the next input (where the
frontend supports `set_next_input`).
"""

from __future__ import annotations

import json
import os
import re
import shlex

USAGE = """usage: %nbrefactor check [--history]       find fork-unsafe code in this notebook
       %nbrefactor fix [--history] [--unsafe-fixes] [--load [N]]
                                          show the fix as a diff and the fixed cells (nothing is written);
                                          --load puts fixed cell N (default: the first changed) into the next input
       %nbrefactor status                 what the guard saw: the first CUDA call, the launches it checked
--history checks the cells run in this kernel even when the notebook file is known."""


def register(shell, state) -> None:
    def nbrefactor(line=""):
        return run(shell, state, line)

    nbrefactor.__doc__ = USAGE
    shell.register_magic_function(nbrefactor, magic_kind="line", magic_name="nbrefactor")

    def undo():
        shell.magics_manager.magics["line"].pop("nbrefactor", None)

    state.undo.append(undo)


_OPTIONS = {"check": {"--history"}, "fix": {"--history", "--unsafe-fixes", "--load"}, "status": set()}


def parse(line: str) -> tuple[str, set[str], int | None]:
    """(command, its flags, the fixed cell `--load` names: 0 for the first, None without it);
    raises ValueError with the line to print."""
    try:
        words = shlex.split(line)
    except ValueError as err:
        raise ValueError(f"%nbrefactor: {err}\n{USAGE}") from None
    command, options = (words[0], words[1:]) if words else ("status", [])
    if command not in _OPTIONS:
        raise ValueError(USAGE)
    flags: set[str] = set()
    load = None
    for i, word in enumerate(options):
        if word.isdigit() and i and options[i - 1] == "--load":
            load = int(word)
        elif word not in _OPTIONS[command]:
            raise ValueError(f"%nbrefactor {command}: unknown option {word}\n{USAGE}")
        elif word == "--load":
            load = 0
        else:
            flags.add(word)
    return command, flags, load


def run(shell, state, line: str) -> None:
    try:
        command, flags, load = parse(line)
    except ValueError as err:
        print(err)
        return
    if command == "status":
        print(status(state))
        return
    from nbrefactor.errors import NotebookError

    try:
        source = notebook_source(shell, state, history="--history" in flags)
        if not source.notebook.is_python:
            print(f"{source.name}: the kernel language is {source.notebook.language}, not Python: nothing to check")
            return
        settings = project_settings(source.folder)
        if command == "check":
            print(check(source, settings.selection()))
            return
        text, cells = fix(source, unsafe_fixes="--unsafe-fixes" in flags or settings.unsafe_fixes, selection=settings.selection())
        print(text)
        if load is not None:
            _load_cell(shell, cells, load)
    except NotebookError as err:  # a notebook nbrefactor cannot read: its one line, not a traceback
        print(f"%nbrefactor {command}: {err.one_line()}")
    except Exception as err:  # noqa: BLE001 - a bug of ours: one line in the notebook, never a traceback there
        print(f"%nbrefactor {command}: internal error ({type(err).__name__}: {err}); please report it")


def project_settings(folder: str):
    """`[tool.nbrefactor]` of the project the notebook is in (its folder; in history mode, the
    kernel's working folder), as the CLI reads it: the selection, `unsafe-fixes` and the limits."""
    from pathlib import Path

    from nbrefactor import config, limits

    settings = config.load_settings(Path(folder))
    limits.configure(settings.limits)
    return settings


# --- what is checked ---------------------------------------------------------------------------


class Source:
    def __init__(self, notebook, name: str, history: bool, note: str, folder: str):
        self.notebook = notebook  # nbrefactor's Notebook
        self.name = name  # how findings are placed: the file's name, or "" in history mode
        self.history = history
        self.note = note  # one line: what was checked
        self.folder = folder  # where its project's settings are looked for

    def place(self, cell: int) -> str:
        return f"In [{cell}]" if self.history else f"{self.name}:cell {cell}"


def notebook_source(shell, state, history: bool = False) -> Source:
    from nbrefactor.kernel.ext import notebook_path
    from nbrefactor.notebook.model import read_file, read_notebook

    path = None if history else notebook_path(shell)
    if path is not None:
        notebook = read_notebook(path, read_file(path))
        name = os.path.basename(path)
        notebook.path = name
        note = f"checked {path} as last saved (save it to include your latest edits)"
        return Source(notebook, name, False, note, os.path.dirname(os.path.abspath(path)))
    cells = list(getattr(shell.history_manager, "input_hist_raw", None) or shell.user_ns.get("In", []))[1:]
    data = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}},
        "cells": [
            {"cell_type": "code", "id": f"in-{n}", "metadata": {}, "execution_count": n, "outputs": [], "source": source}
            for n, source in enumerate(cells, 1)
        ],
    }
    text = json.dumps(data, indent=1) + "\n"
    notebook = read_notebook("kernel-history.ipynb", data=text.encode("utf-8"))
    why = "" if history else " (this kernel does not know its notebook file)"
    note = f"checked the {len(cells)} cells run in this kernel so far, in the order they ran{why}"
    return Source(notebook, "", True, note, os.getcwd())


# --- check -----------------------------------------------------------------------------------


def check(source: Source, selection) -> str:
    from nbrefactor.checker import check_notebook
    from nbrefactor.labels import hint, label

    result = check_notebook(source.notebook, selection, for_reading=True)
    diagnostics = sorted(label(result, selection), key=lambda d: d.sort_key())
    lines = [source.note + ":"]
    for d in diagnostics:
        lines.append(f"{source.place(d.cell)}:{d.row}:{d.column}: {d.code} {d.message}")
        lines.append(f"  help: {_in_kernel(hint(d), d)}")
    for w in result.warnings:
        lines.append(f"{source.place(w.cell)}{f':{w.row}' if w.row else ''}: {w.message}")
    if diagnostics:
        cells = len({d.cell for d in diagnostics})
        found = f"Found {len(diagnostics)} finding{'s' * (len(diagnostics) != 1)} in {cells} cell{'s' * (cells != 1)}."
        if any(d.applicability != "none" for d in diagnostics):
            found += " `%nbrefactor fix` shows the fix."  # (with the flags its help line names)
        else:
            found += " None has an automatic fix: the help lines say where to read how to fix it."
        lines.append(found)
    else:
        lines.append("No multi-GPU problems found.")
    return "\n".join(lines)


def _in_kernel(help: str, d) -> str:
    """The CLI's hint as this magic's (`%nbrefactor fix --unsafe-fixes`): the magic shows that fix in
    the kernel, history mode included; one that needs `--devices N` stays the CLI's (the magic has none)."""
    return help if d.fix_needs else help.replace("`nbrefactor fix", "`%nbrefactor fix", 1)


# --- fix -------------------------------------------------------------------------------------


def fix(source: Source, unsafe_fixes: bool, selection) -> tuple[str, list[tuple[str, str]]]:
    """The diff and the fixed cells as text, and the fixed cells as (place, source)."""
    from nbrefactor.celldiff import cell_diff
    from nbrefactor.fixer import fix_notebook
    from nbrefactor.report import text_line

    result = fix_notebook(source.notebook, unsafe_fixes=unsafe_fixes, selection=selection)
    lines = [source.note.replace("checked", "fixed in memory", 1) + "; nothing was written:"]
    cells: list[tuple[str, str]] = []
    if result.changed:
        diff = cell_diff(result, source.name or "history")
        if source.history:
            diff = re.sub(r"^(---|\+\+\+) history:cell (\d+)", lambda m: f"{m[1]} In [{m[2]}]", diff, flags=re.MULTILINE)
        lines.append(diff.rstrip("\n"))
        seen = set()
        for ch in result.changes:
            key = (ch.cell, ch.message)
            if key not in seen:
                seen.add(key)
                lines.append(f"  {source.place(ch.cell)}: {ch.code} {ch.message}")
        before = {c.id: c for c in result.before.cells if c.id}
        for c in result.after.cells:
            old = before.get(c.id) if c.id else None
            if c.cell_type == "code" and (old is None or old.source != c.source):
                place = source.place(old.number) if old is not None else "new cell"
                cells.append((place, c.source))
        lines.append("")
        lines.append(f"The fixed cells ({len(cells)}):")
        for n, (place, text) in enumerate(cells, 1):
            lines.append(f"# --- [{n}] {place}, fixed ---")
            lines.append(text)
        lines.append("`%nbrefactor fix --load N` puts fixed cell [N] into the next input; `nbrefactor fix NOTEBOOK.ipynb` rewrites the file.")
    else:
        lines.append("Nothing to fix.")
    for d in result.remaining:
        lines.append(f"remains: {text_line(d)}" if not source.history else f"remains: {source.place(d.cell)}:{d.row}:{d.column}: {d.code} {d.message}")
    for r in result.refused:
        lines.append(f"refused: {r}")
    return "\n".join(lines), cells


def _load_cell(shell, cells: list[tuple[str, str]], n: int) -> None:
    if not cells:
        print("--load: no fixed cell to load")
        return
    index = max(n, 1) - 1
    if index >= len(cells):
        print(f"--load: there are {len(cells)} fixed cells")
        return
    shell.set_next_input(cells[index][1], replace=False)
    print(f"--load: fixed cell [{index + 1}] ({cells[index][0]}) is in the next input")


# --- status ----------------------------------------------------------------------------------


def status(state) -> str:
    lines = [f"nbrefactor guard loaded at {state.label(state.loaded_at) if state.loaded_at else 'start-up'}."]
    before = state.before
    if before.get("cuda_initialized"):
        lines.append("CUDA was already initialised when it loaded: where, the tracer cannot say.")
    elif before.get("torch"):
        lines.append("torch was already imported when it loaded: patched then; a device query made before that is not traced.")
    for kind, what in (("init", "first CUDA initialisation"), ("probe", "first fork-poisoning device query")):
        r = state.cuda.get(kind)
        if r is None:
            lines.append(f"{what}: none seen")
        elif r.get("cell") is not None:
            lines.append(f"{what}: {state.label(r['cell'])}, line {r['line']}: `{r['code']}`")
        else:
            lines.append(f"{what}: outside the cells, {r.get('via')}")
    import sys

    guarded = [n for n in sys.modules if n.endswith(("launchers.multiprocessing", "accelerate.launchers")) and sys.modules[n].__dict__.get("_nbrefactor_guarded") is state]
    lines.append(f"launch points guarded: {', '.join(sorted(guarded)) or 'none imported yet (patched when the notebook imports them)'}")
    for n, launch in enumerate(state.launches, 1):
        where = launch["where"]
        at = f"{state.label(where.get('cell'))}, line {where.get('line')}" if where.get("cell") is not None else "outside the cells"
        lines.append(f"launch {n} ({launch['kind']}, {at}): {'stopped' if launch['stopped'] else 'allowed'}")
    for w in before.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)
