"""What `%load_ext nbrefactor` costs: the load itself, and the check at each launch point.

    python benchmarks/kernel_ext.py [--reps 7]

- load: a fresh Python process per repetition (an IPython shell, as a kernel has one), timing
  `%load_ext nbrefactor` alone, with the bytecode cached (as installed) and compiled from source;
  it must not import torch, Lightning, Accelerate or the checker (libcst).
- launch check: in one process with torch and Lightning imported, the guard's check before a fork
  (`guard.diagnose()`: `torch.cuda.is_initialized()`, then one throwaway forked child asking
  `torch.cuda._is_in_bad_fork()`), repeated.

Medians of this run on this machine; numbers from other machines or runs are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LOAD = """
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
t = time.perf_counter()
shell.run_line_magic("load_ext", "nbrefactor")
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "imported": sorted(m for m in ("torch", "lightning", "libcst", "accelerate") if m in sys.modules)}))
"""

CHECK = """
import json, sys, time
import torch, lightning
from nbrefactor.kernel import guard
times = []
for _ in range(REPS):
    t = time.perf_counter()
    assert guard.diagnose() is None
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


def _python(code: str, pycache: str | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if pycache:  # bytecode cached, as in an installed package (pip compiles it)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    else:  # every module compiled from source at each load
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=True)
    return r.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    imported = set()
    with tempfile.TemporaryDirectory() as pycache:
        _python(LOAD, pycache)  # writes the bytecode
        for label, cache in (("bytecode cached (an installed package)", pycache), ("compiled from source (PYTHONDONTWRITEBYTECODE=1)", None)):
            loads = [json.loads(_python(LOAD, cache)) for _ in range(args.reps)]
            imported |= {m for load in loads for m in load["imported"]}
            ms = [load["seconds"] * 1000 for load in loads]
            print(f"%load_ext nbrefactor, {label}: median {statistics.median(ms):.1f} ms over {args.reps} fresh processes (min {min(ms):.1f}, max {max(ms):.1f})")
    imported = sorted(imported)
    print(f"  imported by the load: {', '.join(imported) if imported else 'none of torch, lightning, libcst, accelerate'}")
    checks = [t * 1000 for t in json.loads(_python(CHECK.replace("REPS", str(args.reps))))]
    print(f"check before a fork (torch + Lightning imported, one throwaway child): median {statistics.median(checks):.1f} ms over {args.reps}")
    if imported:
        sys.exit(1)


if __name__ == "__main__":
    main()
