"""Run a notebook in a real Jupyter kernel (nbclient + ipykernel) and collect what it printed."""

from __future__ import annotations

import json
import os
from pathlib import Path


def run_notebook(path: Path, workdir: Path, env: dict[str, str] | None = None, timeout: int = 180) -> tuple[list[str], str]:
    """Execute every cell in a fresh kernel started in `workdir`; return the stdout lines, in
    order, and everything written to stderr (where Lightning reports its processes).

    Raises `nbclient.exceptions.CellExecutionError` when a cell fails.
    """
    import nbclient
    import nbformat

    nb = nbformat.reads(Path(path).read_text(encoding="utf-8"), as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(WHOLE_LINES_CELL))
    saved = dict(os.environ)
    os.environ.update({"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})})
    try:
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    streams = {"stdout": "", "stderr": ""}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") in streams:
                streams[out["name"]] += out["text"]
    return [line for line in streams["stdout"].splitlines() if line.strip()], streams["stderr"]


# A forked process's output reaches the kernel over a new connection per write (ipykernel's
# `_really_send` in a child), so the writes of one `print` ("epoch", " ", "1", ...) can arrive in any
# order. Test harness, not part of a case: every line is written whole, so a line arrives whole.
WHOLE_LINES_CELL = """\
import sys as _sys


class _WholeLines:
    def __init__(self, stream):
        self._stream, self._pending = stream, ""

    def write(self, text):
        self._pending += text
        if "\\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\\n")
            self._stream.write(done + "\\n")
        return len(text)

    def flush(self):
        if self._pending:
            self._stream.write(self._pending)
            self._pending = ""
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


_sys.stdout = _WholeLines(_sys.stdout)
"""


def single_process_env() -> dict[str, str]:
    """Fabric reads LT_* and lets them override its arguments: one device, no fork."""
    return {"LT_DEVICES": "1", "LT_STRATEGY": "auto", "LT_ACCELERATOR": "cpu"}


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


ONE_PROCESS_CELL = """\
# Test harness, not part of the case: every Trainer runs in this one process.
import lightning.pytorch as _pl

_trainer_init = _pl.Trainer.__init__


def _one_process(self, *args, **kwargs):
    kwargs.update(devices=1, strategy="auto")
    _trainer_init(self, *args, **kwargs)


_pl.Trainer.__init__ = _one_process
"""


def one_process(nb: dict) -> dict:
    """The notebook with a first cell that makes every Trainer (and, via LT_*, Fabric) use one process."""
    cell = {"cell_type": "code", "execution_count": None, "id": "one-process", "metadata": {}, "outputs": [], "source": ONE_PROCESS_CELL}
    return {**nb, "cells": [cell, *nb["cells"]]}
