"""`check` and `fix` do work linear in the notebook's size: counted, not timed.

Each shape is checked (with the fixer's labels, as `nbrefactor check` does) and fixed with
`--unsafe-fixes` at a size N and at 4N, under cProfile. Profiling counts every Python call
exactly, so the test does not depend on the machine's load: at 4N no function may be called more
than ~4x as often as at N (a loop over all statements inside a loop over all statements is 16x).
A loop that stays inside one function (no call per step) escapes the count, so the CPU time of 4N
is also held under 12x that of N: far above linear (4x), far below a quadratic blow-up.

benchmarks/scaling.py prints the same shapes at full size, with times.
"""

from __future__ import annotations

import cProfile
import pstats
import time

import pytest

from nbrefactor.config import Selection
from nbrefactor.checker import check_notebook
from nbrefactor.fixer import fix_notebook
from nbrefactor.labels import label
from nbrefactor.notebook.model import read_notebook
from tests.hostile import FABRIC, TRAIN, _nb

HEAD = "import torch\n" + FABRIC + "fabric.launch()\n"

SHAPES = {
    # N cells of two statements, a Fabric cell first and training last: one finding, one big move.
    "cells": (120, lambda n: _nb(HEAD, *[f"x{i} = {i}\nprint(x{i})\n" for i in range(n)], TRAIN)),
    # One cell of N lines.
    "lines": (300, lambda n: _nb(HEAD, "\n".join(f"x{i} = {i}" for i in range(n)), TRAIN)),
    # N findings: CUDA work before the launch in every cell, half of it read again, some noqa'd.
    "findings": (50, lambda n: _nb(
        "import torch\n" + FABRIC,
        *[f"x{i} = torch.zeros(2).cuda()\ny{i} = x{i} + 1" + ("  # noqa: NBR101" if i % 5 == 0 else "") + "\n" for i in range(n)],
        TRAIN + "fabric.launch()\n", *[f"print(y{i})\n" for i in range(0, n, 2)],
    )),
}
GROWTH = 4
MAX_CALL_RATIO = 4.6  # per function, 4N against N; linear is at most 4 (constant work makes it less)
MIN_CALLS = 400  # functions called fewer times at 4N are start-up and per-notebook work
MAX_TIME_RATIO = 12.0


def _work(text: str) -> None:
    selection = Selection()
    notebook = read_notebook("scaling.ipynb", text.encode("utf-8"))
    label(check_notebook(notebook, selection), selection)
    fix_notebook(read_notebook("scaling.ipynb", text.encode("utf-8")), unsafe_fixes=True, selection=selection)


def _profile(text: str) -> tuple[dict[str, int], float]:
    """(calls per function, CPU seconds) of `check` and `fix` on one notebook."""
    profile = cProfile.Profile()
    start = time.process_time()
    profile.enable()
    _work(text)
    profile.disable()
    seconds = time.process_time() - start
    calls = {f"{path.rsplit('/', 1)[-1]}:{line}({name})": stat[1] for (path, line, name), stat in pstats.Stats(profile).stats.items()}
    return calls, seconds


@pytest.mark.parametrize("shape", list(SHAPES))
def test_work_grows_linearly_with_the_notebook(shape):
    n, make = SHAPES[shape]
    _work(make(2))  # imports and caches warm, outside the measurement
    small, small_seconds = _profile(make(n))
    large, large_seconds = _profile(make(GROWTH * n))
    grown = sorted(
        ((calls / max(small.get(name, 0), 1), name, small.get(name, 0), calls) for name, calls in large.items() if calls >= MIN_CALLS),
        reverse=True,
    )
    worst = [f"{name}: {before} -> {after} calls ({ratio:.1f}x)" for ratio, name, before, after in grown if ratio > MAX_CALL_RATIO]
    assert not worst, f"{shape}: work grows faster than the notebook ({GROWTH}x larger):\n" + "\n".join(worst[:10])
    assert large_seconds < MAX_TIME_RATIO * small_seconds, (
        f"{shape}: {GROWTH}x larger took {large_seconds / small_seconds:.1f}x the CPU time ({small_seconds:.2f} s -> {large_seconds:.2f} s)")


def test_the_collector_is_paused_during_the_work_and_runs_again_after(monkeypatch):
    import gc

    from nbrefactor import checker

    monkeypatch.setattr(checker, "PAUSE_COLLECTOR_FROM", 0)  # a small notebook counts as large
    during = []
    analyse = checker._check_notebook
    monkeypatch.setattr(checker, "_check_notebook", lambda nb, selection, *mode: (during.append(gc.isenabled()), analyse(nb, selection, *mode))[1])
    text = SHAPES["cells"][1](3)
    fix_notebook(read_notebook("scaling.ipynb", text.encode("utf-8")), unsafe_fixes=True)
    assert during and not any(during)
    assert gc.isenabled()
    gc.disable()  # a caller that runs without the collector keeps it off
    try:
        fix_notebook(read_notebook("scaling.ipynb", text.encode("utf-8")), unsafe_fixes=True)
        assert not gc.isenabled()
    finally:
        gc.enable()
