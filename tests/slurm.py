"""A real one-node SLURM cluster in a folder, for the tests: munged with its own key and socket,
slurmctld and slurmd (Debian's `slurm-wlm`) run as root in the foreground with a slurm.conf whose
state, spool, log and pid paths all lie in that folder. `cluster(folder)` yields it once the node
is idle and stops every process it started; where it cannot start, the test skips with why."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nbrefactor.launcher.processes import free_port

WAIT_S = 120
BINARIES = ("mungekey", "munged", "slurmctld", "slurmd", "sinfo", "sbatch", "scancel")


@dataclass
class Cluster:
    folder: Path
    conf: Path
    host: str

    def env(self, **extra: str) -> dict[str, str]:
        """The environment SLURM's commands (and the jobs they submit) run with."""
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}


def _unavailable() -> str | None:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"SLURM is not installed (no {', '.join(missing)}; Debian: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as root (SlurmUser=root), and this is not root"
    return None


def _host() -> str:
    host = socket.gethostname().split(".")[0]
    try:
        socket.gethostbyname(host)
    except OSError:
        pytest.skip(f"this host's name {host!r} does not resolve; SLURM and Lightning address the node by it")
    return host


def _cpus() -> int:
    """The CPUs slurmd sees (`slurmd -C`), at least 2 so a 2-task job fits."""
    out = subprocess.run(["slurmd", "-C"], check=False, capture_output=True, text=True, timeout=60).stdout
    found = re.search(r"\bCPUs=(\d+)", out)
    return max(2, int(found.group(1)) if found else os.cpu_count() or 1)


def _conf(folder: Path, host: str, munge_socket: Path) -> str:
    settings = {
        "ClusterName": "nbrefactor",
        "SlurmctldHost": f"{host}(127.0.0.1)",
        "SlurmctldPort": free_port(),
        "SlurmdPort": free_port(),
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "AuthInfo": f"socket={munge_socket}",
        "CredType": "cred/munge",
        "StateSaveLocation": folder / "state",
        "SlurmdSpoolDir": folder / "spool",
        "SlurmctldPidFile": folder / "slurmctld.pid",
        "SlurmdPidFile": folder / "slurmd.pid",
        "SlurmctldLogFile": folder / "slurmctld.log",
        "SlurmdLogFile": folder / "slurmd.log",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_CPU",
        "SlurmdParameters": "config_overrides",
        "MpiDefault": "none",
        "ReturnToService": 2,
        "MinJobAge": 0,  # job records kept, and `sbatch --wait` then polls every 2 s (not 2, 8, 32, 32... s)
    }
    lines = [f"{key}={value}" for key, value in settings.items()]
    lines.append(f"NodeName={host} NodeAddr=127.0.0.1 CPUs={_cpus()} State=UNKNOWN")
    lines.append(f"PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


class _Daemons:
    """The processes the cluster started, each logging to a file in the folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        with open(self.folder / f"{name}.out", "wb") as log:
            self.procs[name] = subprocess.Popen(cmd, cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)

    def dead(self) -> str | None:
        """The first daemon that has exited, if any."""
        return next((name for name, p in self.procs.items() if p.poll() is not None), None)

    def tail(self, name: str) -> str:
        """The end of what a daemon printed (in the foreground each prints its log too)."""
        out = self.folder / f"{name}.out"
        return out.read_text(errors="replace")[-2000:] if out.is_file() else ""

    def stop(self) -> None:
        for p in reversed(self.procs.values()):
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=30)


def _start_munge(daemons: _Daemons, folder: Path) -> Path:
    key, sock = folder / "munge.key", folder / "munge.sock"
    made = subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=False, capture_output=True, text=True, timeout=60)
    if made.returncode != 0:
        pytest.skip(f"the SLURM test cluster did not start: mungekey failed\n{made.stderr[-2000:]}")
    # -f: the pytest folder above this one is not world-searchable; only root uses the socket here.
    daemons.start("munged", ["munged", "-F", "-f", f"--key-file={key}", f"--socket={sock}", f"--pid-file={folder / 'munged.pid'}",
                             f"--log-file={folder / 'munged.log'}", f"--seed-file={folder / 'munged.seed'}"], dict(os.environ))
    _until(daemons, "munged", lambda: sock.exists(), "munged to create its socket")
    return sock


def _node_state(cluster: Cluster) -> str:
    """The node's state as sinfo prints it ("idle", "unk*", ...), "" while slurmctld does not answer."""
    try:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], check=False, env=cluster.env(), capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return ""
    return r.stdout.strip()


def _until(daemons: _Daemons, name: str, ready, what: str) -> None:
    """Wait (at most WAIT_S) until ready(); skip with the daemon's log where it dies or never gets there."""
    deadline = time.monotonic() + WAIT_S
    while not ready():
        dead = daemons.dead()
        if dead or time.monotonic() > deadline:
            why = f"{dead} exited" if dead else f"no {what} within {WAIT_S} s"
            pytest.skip(f"the SLURM test cluster did not start: {why}\n{daemons.tail(dead or name)}")
        time.sleep(0.5)


def _ours(conf: Path) -> list[int]:
    """Every process whose environment names this cluster's slurm.conf: daemons, job steps, tasks."""
    marker = f"SLURM_CONF={conf}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
    return pids


def _cancel_jobs(cluster: Cluster) -> None:
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(["scancel", "--full", "--user=root"], check=False, env=cluster.env(), capture_output=True, timeout=60)


def _kill_leftovers(conf: Path) -> None:
    for pid in _ours(conf):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def cluster(folder: Path) -> Iterator[Cluster]:
    """A one-node cluster whose node is idle; stopped, with anything it ran, on exit."""
    why = _unavailable()
    if why:
        pytest.skip(why)
    host = _host()
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    daemons = _Daemons(folder)
    conf = folder / "slurm.conf"
    c = Cluster(folder, conf, host)
    try:
        sock = _start_munge(daemons, folder)
        conf.write_text(_conf(folder, host, sock))
        daemons.start("slurmctld", ["slurmctld", "-D"], c.env())
        daemons.start("slurmd", ["slurmd", "-D", "-N", host], c.env())
        _until(daemons, "slurmctld", lambda: _node_state(c) == "idle", "idle node in sinfo")
        yield c
    finally:
        if "slurmctld" in daemons.procs and daemons.procs["slurmctld"].poll() is None:
            _cancel_jobs(c)
        daemons.stop()
        _kill_leftovers(conf)
