"""`nbrefactor run NB --engine torchrun|fabric|accelerate`: the notebook exported as `nbrefactor
export` writes it (fixed first), launched by the real launcher, and reported as `run` reports a forked run.

The script goes to the run's temporary folder (`nbrefactor-run-*`, removed on the way out); the
launcher runs in the notebook's folder, so relative data paths resolve, with that folder importable
(a kernel imports modules beside the notebook). Each rank's output goes to a log file of its own
(torchrun's `--log-dir`/`--tee`, given as `PET_*` variables so the command shown is the one a user
types, and `fabric run`, which calls torchrun, honours them too; `accelerate launch --multi_gpu`,
torchrun inside, overrides them with its own `--tee`/`--log_dir`, given on the command run instead).
`--engine slurm` is refused: `run` does not submit jobs. What the report says comes from the
launcher itself:

- the ranks: one log folder per local rank; a rank's pid is the launcher's child whose environment
  holds its `RANK`; a rank that joined the process group printed Lightning's `MEMBER: k/N`
  (Accelerate prints none);
- exit codes: torchrun's failure summary (`rank : R`, `exitcode : C (pid: P)`) for the ranks that
  failed, 0 for all when torchrun exits 0;
- the failing rank's traceback, from its own log, its frames in the script mapped back to the
  notebook's cell and line (`codemods.export_script.line_map`).

Every process of the run is followed by `processes.Tracker` and stopped at the end, as a kernel run's;
the rendezvous port comes from `processes.free_port()` and is checked free afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from nbrefactor.launcher import processes
from nbrefactor.launcher.report import SCHEMA, _cleanup_line, _first_line
from nbrefactor.launcher.runner import _signals_held, _terminate_unwinds

ENGINES = ("torchrun", "fabric", "accelerate", "slurm")
SCRIPT = "train.py"
LOGS = "logs"  # each rank's output, under the run's folder
MEMBER = re.compile(r"MEMBER: (\d+)/(\d+)")
FAILED_RANK = re.compile(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)", re.DOTALL)
FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>.+)$')


class EngineError(Exception):
    """The notebook cannot be launched this way at all (not exportable, no launcher): exit 2."""


@dataclass
class Launch:
    """The launch to make: the command a user would type, and what it needs to run."""

    engine: str
    command: list[str]  # as run
    shown: str  # as a user types it
    processes: int
    accelerator: str
    port: int
    script: Path
    cwd: str


@dataclass
class Outcome:
    """What the launch did."""

    status: str  # completed, failed, timeout, interrupted
    returncode: int | None
    seconds: float
    output: str  # the launcher's own output (every rank's lines tagged by torchrun)
    pids: dict[int, int] = field(default_factory=dict)  # rank -> pid, as seen while it ran


# --- export ---------------------------------------------------------------------------------------


def export(notebook, name: str):
    """(script text, plan, {cell number: fixed source}, {numbers of the cells `fix` changed}): the
    script `nbrefactor export` writes and the cells it was written from."""
    from nbrefactor import export as ex
    from nbrefactor.errors import NotebookError

    try:
        exported = ex.export_notebook(notebook, name)
    except NotebookError as err:
        raise EngineError(err.message) from None
    return exported.script, exported.plan, exported.cells, exported.changed


# --- the launch ------------------------------------------------------------------------------------


def _processes(accelerator: str, devices: int | None) -> tuple[str, int]:
    """(--accelerator, --devices) for the script: `auto` is CUDA when there is a GPU, else the CPU;
    devices default to every GPU, or 2 processes on the CPU (as the forked run)."""
    import torch

    gpus = torch.cuda.device_count() if accelerator != "cpu" else 0
    if accelerator == "auto":
        accelerator = "cuda" if gpus else "cpu"
    return accelerator, devices or (gpus if accelerator == "cuda" and gpus else 2)


def _fabric_cli() -> str:
    beside = Path(sys.executable).parent / "fabric"
    found = str(beside) if beside.exists() else shutil.which("fabric")
    if not found:
        raise EngineError("--engine fabric needs the `fabric` command (lightning) beside this Python")
    return found


KINDS = {"torchrun": ("trainer", "fabric"), "fabric": ("fabric",), "accelerate": ("accelerate",)}  # what each engine launches
RUNS = {"torchrun": "Lightning (Trainer, Fabric)", "fabric": "Fabric", "accelerate": "Accelerate"}
TRAINS = {"trainer": "a Trainer", "fabric": "Fabric", "accelerate": "Accelerate"}


def refusal(engine: str, kind: str) -> str | None:
    """Why `engine` does not launch a notebook of this kind, or None."""
    if kind in KINDS[engine]:
        return None
    use = "accelerate" if kind == "accelerate" else "torchrun"
    return f"--engine {engine} runs {RUNS[engine]} notebooks; this one trains with {TRAINS[kind]}: use --engine {use}"


def slurm_refusal(path: str) -> str:
    script = str(Path(path).with_name(SCRIPT))
    return ("--engine slurm: `nbrefactor run` cannot start a SLURM job; export the script and its batch file, then submit it: "
            f"nbrefactor export {shlex.quote(path)} -o {shlex.quote(script)} --engine slurm && sbatch {shlex.quote(str(Path(script).with_suffix('.sbatch')))}")


def plan_launch(engine: str, kind: str, script: Path, cwd: str, accelerator: str, devices: int | None) -> Launch:
    why = refusal(engine, kind)
    if why:
        raise EngineError(why)
    accelerator, n = _processes(accelerator, devices)
    port = processes.free_port()
    command, shown = LAUNCHERS[engine](script, accelerator, n, port)
    return Launch(engine, command, shlex.join(shown), n, accelerator, port, script, cwd)


def _torchrun(script: Path, accelerator: str, n: int, port: int) -> tuple[list[str], list[str]]:
    """One node with our own port: what --standalone does, on a port checked free afterwards."""
    head = ["--nnodes", "1", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1", "--master_port", str(port)]
    args = [str(script), "--accelerator", accelerator, "--devices", str(n)]
    return [sys.executable, "-m", "torch.distributed.run", *head, *args], ["torchrun", *head, *args]


def _fabric(script: Path, accelerator: str, n: int, port: int) -> tuple[list[str], list[str]]:
    head = ["run", "--accelerator", accelerator, "--devices", str(n), "--main-port", str(port)]
    args = [str(script), "--accelerator", accelerator, "--devices", str(n)]
    return [_fabric_cli(), *head, *args], ["fabric", *head, *args]


def _accelerate(script: Path, accelerator: str, n: int, port: int) -> tuple[list[str], list[str]]:
    """`accelerate launch --multi_gpu` (its torchrun launcher; the script's --cpu keeps the processes on
    the CPU). Accelerate passes its own --tee/--log_dir defaults to torchrun over PET_*: they are given
    on the command run, left out of the one shown."""
    if importlib.util.find_spec("accelerate") is None:
        raise EngineError(f"--engine accelerate needs accelerate in this Python ({sys.executable}): pip install accelerate")
    if n < 2:
        raise EngineError(f"--engine accelerate starts 2 or more processes (accelerate launch --multi_gpu); --devices {n} is one: "
                          "`nbrefactor run` without --engine runs it in a kernel")
    head = ["--multi_gpu", "--num_processes", str(n), "--main_process_port", str(port)]
    args = [str(script), *(["--cpu"] if accelerator == "cpu" else [])]
    logs = ["--tee", "3", "--log_dir", str(script.parent / LOGS)]
    return [sys.executable, "-m", "accelerate.commands.launch", *head, *logs, *args], ["accelerate", "launch", *head, *args]


LAUNCHERS = {"torchrun": _torchrun, "fabric": _fabric, "accelerate": _accelerate}


def _environment(launch: Launch, logs: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LT_CLI_USED", None)  # set by `fabric run` itself, only for its own children
    path = [launch.cwd, env.get("PYTHONPATH", "")]
    env.update(PYTHONPATH=os.pathsep.join(p for p in path if p), PET_LOG_DIR=logs, PET_TEE="3", PYTHONUNBUFFERED="1")
    return env


def _rank_of(pid: int, parent: int) -> int | None:
    """The RANK of a process the launcher started (its direct child), from its environment."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        if int(stat[stat.rfind(")") + 2 :].split()[1]) != parent:
            return None
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    except (OSError, ValueError, IndexError):
        return None
    rank = env.get(b"RANK", b"")
    return int(rank) if rank.isdigit() else None


def launch_and_wait(launch: Launch, run_dir: str, tracker: processes.Tracker, timeout: float | None, verbose: bool) -> Outcome:
    """Start the launcher in its own session, follow its processes, wait for it (or the time
    limit, or Ctrl-C); every process is left to `tracker` to stop."""
    log_path = os.path.join(run_dir, "launcher.log")
    started = time.monotonic()
    pids: dict[int, int] = {}
    status, code = "interrupted", None
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(launch.command, cwd=launch.cwd, env=_environment(launch, os.path.join(run_dir, LOGS)),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        tracker.adopt(proc.pid)
        shown = 0
        try:
            while True:
                try:
                    code = proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    code = None
                for pid in tracker.note():
                    rank = _rank_of(pid, proc.pid)
                    if rank is not None:
                        pids.setdefault(rank, pid)
                if verbose:
                    shown = _stream(log_path, shown)
                if code is not None:
                    status = "completed" if code == 0 else "failed"
                    break
                if timeout and time.monotonic() - started > timeout:
                    status = "timeout"
                    break
        except KeyboardInterrupt:
            status = "interrupted"
        finally:
            tracker.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    output = Path(log_path).read_bytes().decode(errors="replace")
    return Outcome(status, code, time.monotonic() - started, output, pids)


def _stream(path: str, shown: int) -> int:
    """`-v`: print what the launcher wrote since `shown` bytes; the new count."""
    with open(path, "rb") as f:
        f.seek(shown)
        data = f.read()
    if data:
        sys.stderr.write(data.decode(errors="replace"))
        sys.stderr.flush()
    return shown + len(data)


# --- what the ranks did ----------------------------------------------------------------------------


def rank_logs(run_dir: str, rank: int) -> str:
    """Everything rank `rank` wrote (stdout and stderr), from torchrun's log folder for it."""
    parts = []
    for name in ("stdout.log", "stderr.log"):
        for path in sorted(Path(run_dir, LOGS).glob(f"*/attempt_*/{rank}/{name}")):
            parts.append(path.read_text(errors="replace"))
    return "\n".join(parts)


def rank_folders(run_dir: str) -> list[int]:
    found = {int(p.name) for p in Path(run_dir, LOGS).glob("*/attempt_*/*") if p.is_dir() and p.name.isdigit()}
    return sorted(found)


def exit_codes(output: str) -> dict[int, tuple[int, int]]:
    """rank -> (exit code, pid) for each rank torchrun's failure summary lists."""
    out = {}
    for block in re.split(r"\n\s*\[\d+\]:\s*\n", output)[1:]:
        m = FAILED_RANK.search(block)
        if m:
            out.setdefault(int(m.group(1)), (int(m.group(2)), int(m.group(3))))
    return out


def root_cause(output: str) -> int | None:
    """The rank torchrun names as the first observed failure."""
    m = re.search(r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+)", output, re.DOTALL)
    return int(m.group(1)) if m else None


def ranks(outcome: Outcome, run_dir: str) -> list[dict]:
    """Each rank seen (a log folder, a pid, a line of torchrun's summary): pid, exit code, status,
    and the `MEMBER: k/N` it printed. A rank torchrun's summary leaves out of a failed launch
    exited before the failure or was stopped with the rest: its code is not reported."""
    unknown = "stopped" if outcome.status in ("timeout", "interrupted") else "not reported"
    failed = exit_codes(outcome.output)
    seen = set(rank_folders(run_dir)) | set(outcome.pids) | set(failed)
    out = []
    for rank in sorted(seen):
        text = rank_logs(run_dir, rank)
        member = MEMBER.search(text)
        code, pid = failed.get(rank, (0 if outcome.returncode == 0 else None, outcome.pids.get(rank)))
        status = "finished" if code == 0 else "failed" if code is not None and code > 0 else "killed" if code is not None else unknown
        entry = {"rank": rank, "pid": pid or outcome.pids.get(rank), "exit_code": code, "status": status,
                 "member": member.group(0) if member else None}
        out.append(entry)
    return out


RANK_PREFIX = re.compile(r"^\[rank\d+\]: ?", re.MULTILINE)  # torch.distributed's excepthook tags each line of a rank's traceback


def traceback_of(text: str) -> str | None:
    """The last Python traceback in a rank's output (from `Traceback` to the exception line)."""
    text = RANK_PREFIX.sub("", text)
    start = text.rfind("Traceback (most recent call last):")
    if start < 0:
        return None
    lines = text[start:].splitlines()
    end = next((i for i, line in enumerate(lines[1:], 1) if line and not line.startswith((" ", "\t"))), len(lines) - 1)
    return "\n".join(lines[: end + 1])


def place(traceback: str, script: Path, mapping: dict[int, tuple[int, int]], cells: dict[int, str]) -> dict:
    """The innermost frame of the traceback in the exported script: its script line and, where the
    line came from a cell, the cell, the line in it and its code."""
    frames = []
    for line in traceback.splitlines():
        m = FRAME.match(line)
        if m and os.path.basename(m.group("file")) == script.name and Path(m.group("file")).resolve() == script.resolve():
            frames.append(int(m.group("line")))
    if not frames:
        return {"script_line": None, "cell": None, "line": None, "code": None, "frames": []}
    at = frames[-1]
    cell, row = mapping.get(at, (None, None))
    code = cells[cell].split("\n")[row - 1].strip() if cell is not None else None
    placed = [{"script_line": n, "cell": mapping[n][0], "line": mapping[n][1]} for n in frames if n in mapping]
    return {"script_line": at, "cell": cell, "line": row, "code": code, "frames": placed}


# --- the run ---------------------------------------------------------------------------------------


def run_engine(notebook, path: str, *, engine: str, settings) -> dict:
    """Export, launch, report: the report as a dict (the `--report` JSON)."""
    from codemods.export_script import line_map

    if engine == "slurm":
        raise EngineError(slurm_refusal(path))
    for note in processes.clean_stale():
        print(f"note: {note}", file=sys.stderr)
    script_text, plan, cells, changed = export(notebook, path)
    with _terminate_unwinds():  # SIGTERM stops the launch through the `finally` blocks, as Ctrl-C does
        run_dir = tempfile.mkdtemp(prefix=processes.RUN_PREFIX)
        try:
            tracker = processes.Tracker(run_dir)
            try:
                script = Path(run_dir, SCRIPT)
                script.write_text(script_text, encoding="utf-8")
                launch = plan_launch(engine, plan.kind, script, str(Path(path).resolve().parent), settings.accelerator, settings.devices)
                print(f"launching: {launch.shown}", file=sys.stderr)
                outcome = launch_and_wait(launch, run_dir, tracker, settings.timeout, settings.verbose)
            finally:
                with _signals_held():
                    left = tracker.close()  # whatever way out: nothing of the run keeps running
            seen = sorted(tracker.seen)
            report = build(launch, outcome, run_dir, line_map(script_text, cells), cells, changed)
        finally:
            with _signals_held():
                shutil.rmtree(run_dir, ignore_errors=True)
    report.update(notebook=path, settings=_settings(settings))
    report["cleanup"] = _cleanup(tracker, seen, left, launch.port)
    return report


def build(launch: Launch, outcome: Outcome, run_dir: str, mapping, cells, changed) -> dict:
    rank_list = ranks(outcome, run_dir)
    done = [r for r in rank_list if r["exit_code"] == 0]
    verdict = {"interrupted": "interrupted"}.get(outcome.status, "pass" if outcome.status == "completed" and len(done) == launch.processes else "fail")
    warnings = []
    members = {r["member"] for r in rank_list if r["member"]}
    if verdict == "pass" and launch.engine != "accelerate" and len(members) != launch.processes:  # Accelerate prints no MEMBER
        warnings.append(f"{len(members)} of {launch.processes} ranks printed Lightning's `MEMBER: k/{launch.processes}`: "
                        "the script may not have trained in one process group")
    return {
        "schema": SCHEMA,
        "notebook": None,
        "copy": "exported",  # the script `nbrefactor export` writes, from the notebook as `fix` leaves it
        "engine": {"name": launch.engine, "command": launch.shown, "cwd": launch.cwd, "script": SCRIPT},
        "verdict": verdict,
        "outcome": outcome.status,
        "seconds": round(outcome.seconds, 3),
        "ran_on": {"accelerator": launch.accelerator, "devices": launch.processes, "strategy": launch.engine},
        "ranks": len(done),
        "launches": [{"launch": 1, "kind": launch.engine, "processes": launch.processes, "port": launch.port,
                      "returncode": outcome.returncode, "ranks_started": len(rank_list), "ranks_done": len(done), "ranks": rank_list}],
        "failure": _failure(outcome, rank_list, run_dir, launch, mapping, cells, changed) if verdict == "fail" else None,
        "warnings": warnings,
    }


def _failure(outcome: Outcome, rank_list, run_dir, launch, mapping, cells, changed) -> dict:
    if outcome.status == "timeout":
        return {"status": "timeout", "rank": None, "exception": "Timeout", "message": "the launch was still running at the time limit",
                "traceback": None, "cell": None, "line": None, "code": None, "script_line": None, "found_by": "the time limit"}
    failed = [r["rank"] for r in rank_list if r["status"] == "failed"]
    first = root_cause(outcome.output)
    rank = first if first in failed else (failed[0] if failed else None)
    tb = traceback_of(rank_logs(run_dir, rank)) if rank is not None else None
    if tb is None:  # no rank failed with a traceback: the launcher's own last words
        tb = traceback_of(outcome.output)
    last = (tb or "").strip().splitlines()[-1:] or [_first_line(outcome.output[-2000:])]
    exception, _, message = last[0].partition(": ")
    where = place(tb or "", launch.script, mapping, cells)
    return {
        "status": outcome.status,
        "rank": rank,
        "ranks_failed": failed,
        "exception": exception.strip() or None,
        "message": message.strip(),
        "traceback": tb,
        **where,
        "fixed_cell": where["cell"] in changed,  # the line is in the cell as `fix` leaves it
        "found_by": f"rank {rank}'s traceback" if rank is not None else "the launcher's output",
        "launcher_tail": outcome.output.strip().splitlines()[-12:],
    }


def _settings(settings) -> dict:
    return {"accelerator": settings.accelerator, "devices": settings.devices, "mode": "full", "timeout": settings.timeout}


def _cleanup(tracker: processes.Tracker, seen: list[int], left: list[int], port: int) -> dict:
    listening = processes.port_listening(port)
    for _ in range(50):  # a socket closes a moment after its process is gone
        if not listening:
            break
        time.sleep(0.02)
        listening = processes.port_listening(port)
    return {
        "kernel_pid": None,
        "launcher_pid": tracker.root,
        "processes": seen,
        "stopped": sorted(tracker.stopped),
        "left_running": left,
        "names": {str(p): n for p, n in sorted(tracker.names.items())},
        "tracking": tracker.tracking,
        "ports": {str(port): "listening" if listening else "free"},
    }


# --- text ------------------------------------------------------------------------------------------


def render_text(report: dict) -> str:
    e = report["engine"]
    ran = report["ran_on"]
    lines = [f"nbrefactor run {report['notebook']} --engine {e['name']} (the exported script): {ran['accelerator']} x {ran['devices']}",
             f"  launched: {e['command']}  (in {e['cwd']})"]
    for r in report["launches"][0]["ranks"]:
        code = "-" if r["exit_code"] is None else r["exit_code"]
        lines.append(f"  rank {r['rank']}  {r['status']:<9} exit {code:<4} pid {r['pid'] or '?':<8} {r['member'] or ''}".rstrip())
    lines.extend(f"  note: {w}" for w in report["warnings"])
    clean = _cleanup_line(report["cleanup"])
    n = report["ranks"]
    if report["verdict"] == "pass":
        lines.append(f"PASS in {report['seconds']:.1f}s: {n} rank{'s' * (n != 1)} exited 0 under {e['name']}; {clean}.")
    elif report["verdict"] == "interrupted":
        lines.append(f"INTERRUPTED after {report['seconds']:.1f}s; {clean}.")
    else:
        lines.extend(_failure_lines(report, clean))
    return "\n".join(lines) + "\n"


def _failure_lines(report: dict, clean: str) -> list[str]:
    f = report["failure"]
    where = report["notebook"]
    if f.get("cell"):
        where += f":cell {f['cell']}:{f['line']}"
    head = f"{f['exception'] or 'failed'}: {_first_line(f['message'])}" if f["exception"] else "failed"
    out = [f"FAIL in {report['seconds']:.1f}s: {where}: {head}"]
    if f.get("code"):
        out.append(f"  {f['code']}")
    if f.get("rank") is not None:
        out.append(f"  found by {f['found_by']} (rank{'s' * (len(f['ranks_failed']) > 1)} {', '.join(map(str, f['ranks_failed']))} failed)"
                   + (f"; {report['engine']['script']} line {f['script_line']}" if f.get("script_line") else ""))
    if f.get("fixed_cell"):
        out.append(f"  (line {f['line']} of cell {f['cell']} as `nbrefactor fix` leaves it; the script is exported from the fixed notebook)")
    tb = (f.get("traceback") or "").rstrip().splitlines() or f.get("launcher_tail") or []
    cells = {fr["script_line"]: f"cell {fr['cell']}, line {fr['line']}" for fr in f.get("frames", [])}
    for line in tb[-12:]:
        m = FRAME.match(line)
        at = cells.get(int(m.group("line"))) if m and m.group("file").endswith(report["engine"]["script"]) else None
        out.append(f"    | {line}" + (f"   <- {report['notebook']}, {at}" if at else ""))
    out.append(f"  {clean}")
    return out
