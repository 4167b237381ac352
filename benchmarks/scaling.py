"""nbrefactor's scaling series: `check` and `fix` on ever larger notebooks, one table.

    python benchmarks/scaling.py [--quick] [--repeat 1] [--cells 1000,10000,20000] [--lines 1000,10000,50000]

Two shapes, each with a Fabric cell first and a training cell last, so that there is a finding
and a fix to make (the notebooks of tests/hostile.py):

(a) cells: N cells of `x{i} = {i}` / `print(x{i})`
(b) lines: one cell of N lines `x{i} = {i}`

Each notebook goes through `python -m nbrefactor check --no-cache` (cold: the results cache would
answer a repeat from disk) and `fix --unsafe-fixes` (on a fresh copy),
each in a fresh process: wall time and that process's peak memory (from `os.wait4`). The
`s per 1k` column takes off the start-up (`check` on a one-cell notebook); linear work keeps it
flat across a shape's sizes. With ruff installed (`ruff` on PATH, or `python -m ruff`), `ruff check`
on the same notebooks gives a ratio. Not part of the test suite (tests/test_scaling.py guards the
growth by counting work instead).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
sys.path.insert(0, str(ROOT))

from tests.hostile import FABRIC, TRAIN, _nb  # noqa: E402  (the hostile corpus's own notebooks)

HEAD = "import torch\n" + FABRIC + "fabric.launch()\n"


def notebook_of_cells(n: int) -> str:
    return _nb(HEAD, *[f"x{i} = {i}\nprint(x{i})\n" for i in range(n)], TRAIN)


def notebook_of_lines(n: int) -> str:
    # Joined without a last newline, so that a cell of N lines is N lines to the max-cell-lines limit.
    return _nb(HEAD, "\n".join(f"x{i} = {i}" for i in range(n)), TRAIN)


def measure(cmd: list[str], cwd: Path) -> tuple[float, float, int]:
    """(seconds, peak MiB, exit code) of one command in a fresh process: `os.wait4` gives that
    process's own peak, whatever ran before it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return seconds, usage.ru_maxrss / 1024, proc.returncode


def ruff_command() -> list[str] | None:
    exe = shutil.which("ruff")
    if exe:
        return [exe]
    if importlib.util.find_spec("ruff") is not None:
        return [PY, "-m", "ruff"]
    return None


def run_series(folder: Path, shapes: list[tuple[str, int, str]], repeat: int) -> list[dict]:
    ruff = ruff_command()
    rows = []
    for shape, size, text in shapes:
        source = folder / f"{shape}_{size}.ipynb"
        source.write_text(text, encoding="utf-8")
        ruff_s = None
        if ruff is not None:
            ruff_s = statistics.median(
                measure([*ruff, "check", "--no-cache", "--isolated", "--exit-zero", str(source)], folder)[0] for _ in range(repeat)
            )
        for command in (["check", "--no-cache"], ["fix", "--unsafe-fixes"]):
            runs = []
            for _ in range(repeat):
                target = folder / f"run_{shape}_{size}.ipynb"
                shutil.copyfile(source, target)  # `fix` writes: each run starts from the original
                runs.append(measure([PY, "-m", "nbrefactor", *command, str(target)], folder))
            seconds = statistics.median(r[0] for r in runs)
            rows.append({"shape": shape, "size": size, "command": " ".join(command), "seconds": seconds,
                         "peak": max(r[1] for r in runs), "exit": runs[-1][2], "ruff": ruff_s})
            print(f"  {shape:5} {size:>6} {' '.join(command):20} {seconds:7.2f} s {rows[-1]['peak']:7.0f} MiB  exit {runs[-1][2]}",
                  file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: cells 1000,4000 and lines 1000,10000")
    parser.add_argument("--cells", default=None, help="comma-separated cell counts (default 1000,10000,20000)")
    parser.add_argument("--lines", default=None, help="comma-separated line counts (default 1000,10000,50000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median is shown")
    args = parser.parse_args()
    cells = [int(n) for n in (args.cells or ("1000,4000" if args.quick else "1000,10000,20000")).split(",")]
    lines = [int(n) for n in (args.lines or ("1000,10000" if args.quick else "1000,10000,50000")).split(",")]
    shapes = [("cells", n, notebook_of_cells(n)) for n in cells] + [("lines", n, notebook_of_lines(n)) for n in lines]

    with tempfile.TemporaryDirectory(prefix="nbrefactor-scaling-") as tmp:
        folder = Path(tmp)
        tiny = folder / "tiny.ipynb"
        tiny.write_text(_nb(HEAD), encoding="utf-8")
        startup = statistics.median(measure([PY, "-m", "nbrefactor", "check", "--no-cache", str(tiny)], folder)[0] for _ in range(max(3, args.repeat)))
        rows = run_series(folder, shapes, args.repeat)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"median of {args.repeat} run(s); start-up (`check` on a one-cell notebook) {startup:.2f} s")
    print()
    ruff_shown = any(r["ruff"] is not None for r in rows)
    print("| shape | size | command | exit | seconds | peak MiB | s per 1k (less start-up) |" + (" ruff check s | x ruff |" if ruff_shown else ""))
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if ruff_shown else ""))
    for r in rows:
        per_1k = max(r["seconds"] - startup, 0.0) / r["size"] * 1000
        line = f"| {r['shape']} | {r['size']:,} | {r['command']} | {r['exit']} | {r['seconds']:.2f} | {r['peak']:.0f} | {per_1k:.3f} |"
        if ruff_shown:
            line += f" {r['ruff']:.2f} | {r['seconds'] / r['ruff']:.0f}x |" if r["ruff"] else " | |"
        print(line)
    print()
    for shape in dict.fromkeys(r["shape"] for r in rows):
        for command in dict.fromkeys(r["command"] for r in rows):
            series = [r for r in rows if r["shape"] == shape and r["command"] == command]
            per = [max(r["seconds"] - startup, 1e-9) / r["size"] for r in series]
            if len(per) > 1:
                print(f"{shape}, {command}: time per 1k from {series[0]['size']:,} to {series[-1]['size']:,} grows {per[-1] / per[0]:.2f}x "
                      f"(1.00x: linear)")
    if any(r["exit"] not in (0, 1) for r in rows):
        print("exit 2: nbrefactor gave up on the notebook (a limit, or the time budget): its seconds are not the work's")
    if not ruff_shown:
        print("ruff not installed: no ratio column")


if __name__ == "__main__":
    main()
