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
