"""`nbrefactor run` leaves nothing running and nothing on disk, and never kills a stranger (issue 12,
items 6 and 7).

End to end through the real CLI and a real kernel (tiny notebooks, no torch work): processes a cell
hides from the kernel's process tree (a new session, a double fork) are stopped and counted; a run
killed with SIGKILL leaves its temporary folder (with the kernel's connection file) that the next
run removes, leaving every other folder alone; SIGTERM removes it at once. Unit level: a recorded
pid whose start time is not the recorded one is never signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_launcher import launcher_env, needs_kernel, notebook, running

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux: /proc, cgroups, subreaper")

# five sleeps that leave the kernel's process tree or session, each writing its pid to NAME.pid
HIDE = r'''import os, subprocess, time
with open("cgroup", "w") as f:
    f.write(open("/proc/self/cgroup").read())
subprocess.Popen(["setsid", "bash", "-c", "echo $$ > a.pid; exec sleep 300"])
subprocess.Popen(["bash", "-c", "echo $$ > b.pid; exec sleep 300"], start_new_session=True)
subprocess.run(["bash", "-c", "(setsid bash -c 'echo $$ > c.pid; exec sleep 300' &)"])
for tag, session in (("d", True), ("e", False)):
    middle = os.fork()
    if middle == 0:
        if session:
            os.setsid()
        if os.fork() == 0:
            with open(f"{tag}.pid.tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(f"{tag}.pid.tmp", f"{tag}.pid")
            os.execvp("sleep", ["sleep", "300"])
        os._exit(0)
    os.waitpid(middle, 0)
while not all(os.path.exists(f"{t}.pid") and open(f"{t}.pid").read().strip() for t in "abcde"):
    time.sleep(0.01)'''

# the kernel writes its pid, starts a sleep in a new session, and then waits
WAIT = r'''import os, subprocess, time
subprocess.Popen(["setsid", "bash", "-c", "echo $$ > orphan.pid.tmp; mv orphan.pid.tmp orphan.pid; exec sleep 300"])
while not os.path.exists("orphan.pid"):
    time.sleep(0.01)
with open("kernel.pid.tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename("kernel.pid.tmp", "kernel.pid")
time.sleep(300)'''


def _pids(folder: Path, names) -> dict[str, int]:
    return {n: int((folder / f"{n}.pid").read_text()) for n in names if (folder / f"{n}.pid").exists()}


def _kill_sleepers(pids) -> None:
    """After a failed assertion: stop what the test started (only if it is still a sleep or python)."""
    from nbrefactor.launcher import processes

    for pid in pids:
        if processes.name(pid) in ("sleep", "python", "bash") and running(pid):
            os.kill(pid, signal.SIGKILL)


def _env(tmp_path: Path, **extra) -> dict:
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    runtime = tmp_path / "runtime"
    runtime.mkdir(exist_ok=True)
    return {**launcher_env(tmp_path), "TMPDIR": str(tmp), "JUPYTER_RUNTIME_DIR": str(runtime), **extra}


def _cli(nb: Path, env: dict) -> list[str]:
    return [sys.executable, "-m", "nbrefactor.launcher", str(nb), "--accelerator", "cpu", "--report", str(nb.with_suffix(".json"))]


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if not path.exists():
        proc.kill()
        raise AssertionError(f"{path.name} never appeared: {proc.communicate(timeout=30)}")


def _run_folders(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("nbrefactor-run-"))


# -- item 6: new sessions and double forks ------------------------------------------------------


@needs_kernel
@pytest.mark.parametrize("tracking", ["cgroup", "subreaper"])
def test_processes_in_a_new_session_or_double_forked_are_stopped_and_counted(tmp_path, tracking):
    from nbrefactor.launcher import processes

    if tracking == "cgroup" and processes.own_cgroup() is None:
        pytest.skip("no writable cgroup v2 here")
    env = _env(tmp_path, **({processes.NO_CGROUP: "1"} if tracking == "subreaper" else {}))
    nb = notebook(tmp_path / "hide.ipynb", HIDE)
    try:
        r = subprocess.run(_cli(nb, env), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        hidden = _pids(tmp_path, "abcde")
        assert len(hidden) == 5, r.stdout + r.stderr
        report = json.loads(nb.with_suffix(".json").read_text())
        assert r.returncode == 0, r.stdout + r.stderr
        cleanup = report["cleanup"]
        assert cleanup["tracking"] == tracking
        assert [n for n, p in hidden.items() if running(p)] == []  # before: all five survived, re-parented to init
        assert set(hidden.values()) <= set(cleanup["stopped"]) and cleanup["left_running"] == []
        assert {cleanup["names"][str(p)] for p in hidden.values()} == {"sleep"}
        assert cleanup["kernel_pid"] in cleanup["stopped"]
        n = len(cleanup["stopped"])
        assert n >= 6 and f"nothing left running ({n} processes stopped)" in r.stdout
        assert _run_folders(tmp_path) == []  # the run folder went with the run
        assert os.listdir(tmp_path / "runtime") == []  # and no connection file in Jupyter's runtime folder
        kernel_cgroup = next(line[3:] for line in (tmp_path / "cgroup").read_text().splitlines() if line.startswith("0::"))
        if tracking == "cgroup":  # the kernel ran in a cgroup of the run's own, removed with it
            assert os.path.basename(kernel_cgroup).startswith(processes.RUN_PREFIX)
            mounts = [point for _, point in processes._cgroup2_mounts()]
            assert mounts and not any(os.path.exists(point.rstrip("/") + kernel_cgroup) for point in mounts)
    finally:
        _kill_sleepers(_pids(tmp_path, "abcde").values())


def test_what_could_not_be_stopped_is_named():
    from nbrefactor.launcher.report import _cleanup_line

    cleanup = {"processes": [1, 2, 3, 4, 123], "stopped": [1, 2, 3], "left_running": [123], "names": {"123": "sleep"}, "tracking": "cgroup", "ports": {"29500": "free"}}
    assert _cleanup_line(cleanup) == "STILL RUNNING after cleanup: 3 processes stopped; 1 could not be stopped: pid 123 (sleep); port 29500 free"
    cleanup.update(stopped=[1], left_running=[], tracking="process tree")
    assert _cleanup_line(cleanup) == "nothing left running (1 process stopped) (only the kernel's process tree was tracked here), port 29500 free"


# -- item 7: a pid is only killed while it is the process recorded -----------------------------


def test_a_recorded_pid_whose_start_time_differs_is_never_killed():
    from nbrefactor.launcher import processes

    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        true_start = processes.start_time(sleeper.pid)
        assert true_start is not None
        tracker = processes.Tracker(None, cgroup=False, subreaper=False)
        tracker.known[sleeper.pid] = true_start - 7  # the pid as recorded for an earlier process, since reused
        assert processes.kill_verified(sleeper.pid, true_start - 7) is False
        assert tracker.stop(timeout=0.3) == []  # not the run's: neither killed nor reported as left
        assert running(sleeper.pid) and sleeper.pid not in tracker.stopped
        tracker.known[sleeper.pid] = true_start  # control: the same pid with its own start time is killed
        assert tracker.stop() == [] and sleeper.pid in tracker.stopped
        assert not running(sleeper.pid)  # (reaped by the tracker: it is our child)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


# -- the run's files: removed on SIGTERM, and after a SIGKILL by the next run ----------------------


@needs_kernel
def test_sigterm_removes_the_run_folder_and_stops_everything(tmp_path):
    env = _env(tmp_path)
    nb = notebook(tmp_path / "wait.ipynb", WAIT)
    proc = subprocess.Popen(_cli(nb, env), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "kernel.pid", proc)
        [folder] = _run_folders(tmp_path)
        assert (folder / "kernel.json").exists() and os.listdir(tmp_path / "runtime") == []
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, out + err  # interrupted, cleaned up
        assert not folder.exists()
        pids = _pids(tmp_path, ["kernel", "orphan"])
        assert [n for n, p in pids.items() if running(p)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_sleepers(_pids(tmp_path, ["kernel", "orphan"]).values())


@needs_kernel
def test_after_a_sigkill_the_next_run_removes_the_leftovers_and_nothing_else(tmp_path):
    from nbrefactor.launcher import processes

    env = _env(tmp_path)
    tmp = tmp_path / "tmp"
    # not to be touched: no owner file (a run just starting), a live owner, not nbrefactor's prefix
    starting = tmp / "nbrefactor-run-starting"
    starting.mkdir()
    live = tmp / "nbrefactor-run-live"
    live.mkdir()
    me = {"pid": os.getpid(), "start": processes.start_time(os.getpid()), "boot": processes._boot_id(), "pidns": processes._pid_namespace()}
    (live / "owner.json").write_text(json.dumps(me))
    other = tmp / "someone-else"
    other.mkdir()
    (other / "owner.json").write_text(json.dumps({**me, "pid": 999999, "start": 1}))
    keep = {starting, live, other}

    nb = notebook(tmp_path / "wait.ipynb", WAIT)
    proc = subprocess.Popen(_cli(nb, env), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "kernel.pid", proc)
        [folder] = [f for f in _run_folders(tmp_path) if f not in keep]
        assert (folder / "kernel.json").exists() and (folder / "owner.json").exists()
        assert os.listdir(tmp_path / "runtime") == []  # the connection file is in the run folder
        proc.kill()
        proc.wait(timeout=30)
        assert folder.exists()  # SIGKILL cannot be caught: left for the next run

        tiny = notebook(tmp_path / "tiny.ipynb", "x = 1")
        r = subprocess.run(_cli(tiny, env), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not folder.exists()
        assert f"note: removed {folder}, left by nbrefactor run (pid {proc.pid}) that was killed" in r.stderr
        assert all(k.exists() for k in keep) and (live / "owner.json").exists()
        pids = _pids(tmp_path, ["kernel", "orphan"])
        assert len(pids) == 2 and [n for n, p in pids.items() if running(p)] == []  # what it left was stopped too
        assert os.listdir(tmp_path / "runtime") == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_sleepers(_pids(tmp_path, ["kernel", "orphan"]).values())
