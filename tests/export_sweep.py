"""Every runnable golden notebook of the Trainer and Fabric fixes, exported (`nbrefactor export`) and
run under `torchrun --nproc_per_node 2 ... --accelerator cpu --devices 2`: the full sweep, too slow
for CI (tests/test_export_torchrun.py runs one case per layout). Run it by hand:

    nice -n 10 python tests/export_sweep.py          # all of them, a table on stdout, exit 1 if one fails
    nice -n 10 python tests/export_sweep.py CASE...  # only these

A case passes when torchrun exits 0 and each of the two ranks wrote, in its own log file (torchrun's
`--log-dir`/`--redirects`, one folder per rank), Lightning's `MEMBER: k/2` line: both ranks joined one
process group of two.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "golden"
TIMEOUT = 300  # seconds per launch: a loaded 2-core machine runs two test workers at once
MEMBER = re.compile(r"MEMBER: (\d+)/(\d+)")


def runnable_cases() -> list[Path]:
    """golden/<case>/ with "runnable": true, Trainer and Fabric cases (Accelerate exports are not made yet)."""
    out = []
    for case in sorted(GOLDEN.iterdir()):
        meta = case / "case.json"
        if meta.is_file() and json.loads(meta.read_text()).get("runnable") and case.name.startswith(("trainer_", "fabric_")):
            out.append(case)
    return out


def export(case: Path, folder: Path) -> tuple[Path | None, str]:
    """The case's fixed notebook (expected.ipynb) exported to folder/train.py; (path, error line)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "train.py"
    r = subprocess.run([sys.executable, "-m", "nbrefactor", "export", str(case / "expected.ipynb"), "-o", str(script)],
                       cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return (script, "") if r.returncode == 0 else (None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")


@dataclass
class Launch:
    returncode: int
    members: dict[int, str]  # rank (its log folder) -> the `MEMBER: k/n` it printed, "" if none
    output: str  # torchrun's own output, every rank's lines tagged by it
    seconds: float


def torchrun(script: Path, case: Path, workdir: Path, processes: int = 2) -> Launch:
    """`torchrun --standalone --nproc_per_node N script --accelerator cpu --devices N`, run in
    `workdir` with the case folder importable (a module the notebook imports lies beside it)."""
    logs = workdir / "logs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join([str(case), str(ROOT)]),
           "PET_LOG_DIR": str(logs), "PET_TEE": "3"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), str(script),
           "--accelerator", "cpu", "--devices", str(processes)]
    started = time.monotonic()
    with subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True) as proc:
        try:
            output, _ = proc.communicate(timeout=TIMEOUT)
        finally:  # torchrun stops its ranks when it exits; on a timeout or an error, its whole session goes
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    members = {}
    for rank in range(processes):
        found = [MEMBER.search(p.read_text(errors="replace")) for p in logs.glob(f"*/attempt_*/{rank}/stderr.log")]
        members[rank] = next((m.group(0) for m in found if m), "")
    return Launch(proc.returncode, members, output, time.monotonic() - started)


def passed(launch: Launch, processes: int = 2) -> bool:
    return launch.returncode == 0 and sorted(launch.members.values()) == [f"MEMBER: {k}/{processes}" for k in range(1, processes + 1)]


def main(argv: list[str]) -> int:
    import tempfile

    cases = [c for c in runnable_cases() if not argv or c.name in argv]
    failed = 0
    print(f"{'case':<32} {'export':<8} {'torchrun':<9} {'ranks':<26} seconds")
    total = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nbrefactor-sweep-") as tmp:
        for case in cases:
            script, error = export(case, Path(tmp) / case.name)
            if script is None:
                failed += 1
                print(f"{case.name:<32} {'FAIL':<8} {'-':<9} {error}")
                continue
            launch = torchrun(script, case, script.parent)
            ok = passed(launch)
            failed += not ok
            ranks = ", ".join(f"{r}: {m or 'none'}" for r, m in launch.members.items())
            print(f"{case.name:<32} {'ok':<8} {'exit ' + str(launch.returncode):<9} {ranks:<26} {launch.seconds:.1f}", flush=True)
            if not ok:
                print("    | " + "\n    | ".join(launch.output.strip().splitlines()[-15:]))
    print(f"{len(cases) - failed}/{len(cases)} passed in {time.monotonic() - total:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
