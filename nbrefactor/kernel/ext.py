"""`%load_ext nbrefactor`: what loading and unloading do in the user's kernel.

Loading registers two IPython events (`pre_run_cell`: which cell is running, with its id when the
frontend sends one; the cell compiler: which code filename is which `In [n]`), an import hook that
patches torch, Lightning and Accelerate when the notebook imports them (`tracer.PatchOnImport`), and
the `%nbrefactor` magic. Modules imported before the extension was loaded are patched at once.
Only the standard library is imported here: torch is never imported by the extension.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

from nbrefactor.kernel import tracer

STATE = None  # the one KernelState of this kernel, while the extension is loaded


class KernelState:
    def __init__(self, shell):
        self.shell = shell
        self.pid = os.getpid()
        self.count = None  # the running cell's execution count (`In [n]`)
        self.pending_id = None  # the cell id `pre_run_cell` got, until the cell is compiled
        self.cell_ids = {}  # execution count -> the frontend's cell id (IPython 8+ and a frontend that sends it)
        self.cell_files = {}  # code filename IPython compiled a cell under -> execution count
        self.cuda = {}  # "init" / "probe" -> first record
        self.launches = []  # what the guard saw at each launch point: (kind, stopped, where)
        self.loaded_at = running_count(shell) if shell is not None else None
        self.before = {}  # what was already true when the extension loaded
        self.finder = None
        self.undo = []  # callables that take the patches back out (unload)
        self.notebook_cache = {}  # path -> (mtime, size, [cell ids])

    # --- where we are ---------------------------------------------------------------------

    def cell_of(self, filename: str):
        return self.cell_files.get(filename)

    def where(self, frame) -> dict:
        at = tracer.where(traceback.extract_stack(frame), self.cell_of)
        at["running_cell"] = self.count
        return at

    def label(self, count) -> str:
        """`In [5]`, with the notebook's own cell number when the kernel knows the file and the cell id:
        `In [5], cell 3 of train.ipynb`."""
        if count is None:
            return "a cell"
        text = f"In [{count}]"
        number, path = self.notebook_cell(count)
        if number is not None:
            text += f", cell {number} of {os.path.basename(path)}"
        return text

    def notebook_cell(self, count):
        """(1-based cell number over all cells, the notebook's path), or (None, path-or-None)."""
        path = notebook_path(self.shell)
        cell_id = self.cell_ids.get(count)
        if path is None or not cell_id:
            return None, path
        ids = self._ids(path)
        if cell_id in ids:
            return ids.index(cell_id) + 1, path
        return None, path

    def _ids(self, path: str) -> list:
        try:
            st = os.stat(path)
        except OSError:
            return []
        key = (st.st_mtime_ns, st.st_size)
        cached = self.notebook_cache.get(path)
        if cached and cached[0] == key:
            return cached[1]
        try:
            with open(path, encoding="utf-8") as f:
                cells = json.load(f).get("cells", [])
            ids = [c.get("id") if isinstance(c, dict) else None for c in cells]
        except (OSError, ValueError, AttributeError):
            ids = []
        self.notebook_cache[path] = (key, ids)
        return ids

    # --- the tracer's callback ---------------------------------------------------------------

    def on_cuda(self, kind: str, frame) -> None:
        if kind in self.cuda or os.getpid() != self.pid:
            return  # recorded already, or a forked child's own CUDA (that is what it is for)
        record = {"kind": kind, "lightning_imported": tracer.lightning_imported(), "time": time.time(), **self.where(frame)}
        self.cuda[kind] = record


def running_count(shell) -> int:
    """The `In [n]` of the cell running now (0 at start-up, before any cell). Not
    `shell.execution_count`: IPython 9 counts the cell before running it (n + 1 while it runs),
    IPython 7 and 8 after (n); both store the cell's input in the history first."""
    history = getattr(getattr(shell, "history_manager", None), "input_hist_raw", None)
    if isinstance(history, list):
        return len(history) - 1
    return shell.execution_count


def notebook_path(shell):
    """The notebook this kernel runs, when the frontend says: VS Code's `__vsc_ipynb_file__`, Jupyter
    Server's `JPY_SESSION_NAME` (ipykernel copies it to `__session__`). None otherwise (Colab, Kaggle,
    a console)."""
    ns = getattr(shell, "user_ns", None) or {}
    for value in (ns.get("__vsc_ipynb_file__"), os.environ.get("JPY_SESSION_NAME"), ns.get("__session__")):
        if isinstance(value, str) and value.endswith(".ipynb") and os.path.isfile(value):
            return value
    return None


# --- events --------------------------------------------------------------------------------


def _pre_run_cell(info=None) -> None:
    """The frontend's cell id, kept until the cell is compiled under its number (IPython 9 counts the
    cell before this event, IPython 8 after: the compiler's `number` is the one to trust)."""
    stored = getattr(info, "store_history", True)
    STATE.pending_id = getattr(info, "cell_id", None) if stored else None


def _wrap_cell_compiler(shell) -> None:
    """Remember which `In [n]` each compiled code filename belongs to (ipykernel names cell code by a
    hash of its text: the same text run again is the newer cell)."""
    compiler = shell.compile
    original = compiler.cache

    def cache(transformed_code, number=0, raw_code=None):
        # IPython 7 (Colab's) has no `raw_code` parameter and never passes it
        name = original(transformed_code, number) if raw_code is None else original(transformed_code, number, raw_code)
        if STATE is not None and number:
            STATE.cell_files[name] = number
            STATE.count = number
            if STATE.pending_id:
                STATE.cell_ids[number] = STATE.pending_id
                STATE.pending_id = None
        return name

    compiler.cache = cache

    def undo():
        if compiler.__dict__.get("cache") is cache:
            del compiler.cache

    STATE.undo.append(undo)


# --- load / unload -------------------------------------------------------------------------


def load(shell) -> None:
    global STATE
    if STATE is not None:
        return  # `%load_ext` twice: IPython calls us once, `%reload_ext` unloads first
    from nbrefactor.kernel import guard, magics

    STATE = KernelState(shell)
    torch = sys.modules.get("torch")
    STATE.before = {
        "torch": torch is not None,
        "cuda_initialized": torch is not None and tracer.initialized(torch.cuda),
        "lightning": tracer.lightning_imported(),
    }
    if shell is not None:
        shell.events.register("pre_run_cell", _pre_run_cell)
        STATE.undo.append(lambda: shell.events.unregister("pre_run_cell", _pre_run_cell))
        _wrap_cell_compiler(shell)
        guard.show_briefly(shell, STATE)
        magics.register(shell, STATE)
    patches = guard.patches(STATE)
    STATE.finder = tracer.PatchOnImport(patches, lambda name, module: guard.apply(STATE, patches, name, module))
    sys.meta_path.insert(0, STATE.finder)
    for name in list(patches):
        if name in sys.modules:  # imported before the extension: patch now
            guard.apply(STATE, patches, name, sys.modules[name])


def unload(shell) -> None:
    global STATE
    if STATE is None:
        return
    state, STATE = STATE, None
    if state.finder in sys.meta_path:
        sys.meta_path.remove(state.finder)
    for undo in reversed(state.undo):
        try:
            undo()
        except Exception:  # noqa: BLE001, S110 - take out what can be taken out
            pass
