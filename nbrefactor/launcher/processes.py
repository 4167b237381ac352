"""Processes and ports, read from /proc without psutil: what a run must not leave behind.

A forked training process keeps the GPU and the rendezvous port (`MASTER_PORT`) until it exits; a
kernel killed mid-launch leaves its children running. `Tracker` follows every process of a run,
including those that leave the kernel's process tree (a new session, a double fork):

- a cgroup v2 of the run's own, created under the current one where that is writable: the kernel is
  moved into it before it runs any cell, everything it starts is born inside it, and `cgroup.kill`
  (or a kill of each process listed in `cgroup.procs`) stops them all;
- else (and in addition) the `run` process is a child subreaper (Linux), so an orphan of the kernel
  is re-parented to `run` and found as its descendant instead of escaping to init;
- each process is recorded with its start time (/proc/PID/stat field 22) when first seen, and is
  only signalled after its start time was read again through a pidfd: a pid the system gave to some
  other process since is never killed.

On systems without /proc they fall back to the kernel's process tree, `os.kill(pid, 0)` and binding
the port, and the report says the tracking was weaker.

A run's temporary folder (`nbrefactor-run-*`) holds `owner.json` (the `run` process, its start time,
its cgroup and the processes seen): `clean_stale` removes what a run killed with SIGKILL left behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import socket
import stat as stat_
import sys
import tempfile
import time

PROC = "/proc"
RUN_PREFIX = "nbrefactor-run-"  # the run's temporary folder, and its cgroup
OWNER = "owner.json"
NO_CGROUP = "NBREFACTOR_NO_CGROUP"  # set to 1: track without a cgroup (the subreaper alone)


def _fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on, or None when the process does not exist."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    return data[data.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, or None when it does not exist."""
    rest = _fields(pid)
    return None if rest is None else (rest[0], int(rest[1]), int(rest[2]))


def start_time(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (field 22 of /proc/PID/stat): with the pid,
    it names one process for the whole uptime. None when it does not exist (or there is no /proc)."""
    rest = _fields(pid)
    return None if rest is None else int(rest[19])


def name(pid: int) -> str:
    try:
        with open(f"{PROC}/{pid}/comm", "rb") as f:
            return f.read().decode(errors="replace").strip()
    except OSError:
        return "?"


def alive(pid: int) -> bool:
    """Running (a zombie, already dead and waiting to be reaped, does not count)."""
    if os.path.isdir(PROC):
        stat = _stat(pid)
        return stat is not None and stat[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_tree(root: int, group: bool = True, skip=()) -> set[int]:
    """`root` and every running process below it, or in its process group (a kernel runs in a session
    of its own, so its group is exactly what it started). `skip`: pids whose subtrees are left out."""
    if not os.path.isdir(PROC):
        return {root} if alive(root) else set()
    parents: dict[int, int] = {}
    members: set[int] = set()
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        stat = _stat(int(name))
        if stat is None or stat[0] in ("Z", "X"):
            continue
        parents[int(name)] = stat[1]
        if group and stat[2] == root:
            members.add(int(name))
    tree = {root} if root in parents else set()
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree and pid not in skip:
                tree.add(pid)
                changed = True
    return tree | members


def kill_all(pids, group: int | None = None) -> None:
    """SIGKILL a process group and a set of processes the caller has just listed; gone or not ours is
    fine. Not for pids seen earlier: those may be other processes by now (`kill_verified`)."""
    if group:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def wait_gone(pids, timeout: float = 5.0) -> list[int]:
    """Wait until none of `pids` runs, reaping those that are our children (the kernel, and as a
    subreaper its orphans); return those still running after `timeout` seconds."""
    me = os.getpid()
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.waitpid(pid, os.WNOHANG)
        pending = []
        for pid in pids:
            if not os.path.isdir(PROC):
                if alive(pid):
                    pending.append(pid)
                continue
            stat = _stat(pid)
            if stat is None or (stat[0] in ("Z", "X") and stat[1] != me):  # gone, or a zombie init reaps
                continue
            pending.append(pid)
        if not pending or time.monotonic() >= deadline:
            return [p for p in pending if alive(p)]
        time.sleep(0.02)


def become_subreaper() -> bool:
    """Linux: orphans of the kernel (its forked children once it is killed) become our children, so
    they are reaped here instead of lingering as zombies. Best effort."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except Exception:
        return False


def kill_verified(pid: int, start: int | None) -> bool:
    """SIGKILL `pid` only while it is the process that started at `start` (clock ticks since boot);
    True when the signal was sent. The pid is pinned with a pidfd before its start time is read, so
    the process checked is the process signalled. `start` None: no /proc to check with, for a pid
    the caller has just listed."""
    if start is None:
        if os.path.isdir(PROC):
            return False  # seen without a start time: cannot be told from a reused pid
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            return False
        return True
    fd = None
    if hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except OSError:  # no pidfds in this kernel: check, then kill (a window of microseconds)
            fd = None
    try:
        if start_time(pid) != start:
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        if fd is not None:
            os.close(fd)


def _unescape(field: str) -> str:
    """A path from /proc/self/mountinfo, where a space is written \\040."""
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _cgroup2_mounts() -> list[tuple[str, str]]:
    """(root inside the hierarchy, mount point) of each cgroup2 mount."""
    mounts = []
    with contextlib.suppress(OSError), open(f"{PROC}/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[:1] == ["cgroup2"]:
                fields = left.split()
                mounts.append((_unescape(fields[3]), _unescape(fields[4])))
    return mounts


def own_cgroup() -> str | None:
    """The folder of this process's cgroup v2, when it is mounted here and writable; else None."""
    try:
        with open(f"{PROC}/self/cgroup", encoding="utf-8") as f:
            rel = next((line.strip()[3:] for line in f if line.startswith("0::")), None)
    except OSError:
        return None
    if not rel or rel.endswith("(deleted)"):
        return None
    for root, point in _cgroup2_mounts():
        root = root.rstrip("/")
        if rel == root or rel.startswith(root + "/") or not root:
            path = os.path.join(point, rel[len(root) :].lstrip("/"))
            if os.path.isfile(os.path.join(path, "cgroup.procs")) and os.access(path, os.W_OK):
                return path.rstrip("/") or "/"
    return None


class Cgroup:
    """A cgroup v2 of the run's own: what is born in it stays in it, whatever session or parent."""

    def __init__(self, path: str):
        self.path = path

    @classmethod
    def create(cls, leaf: str) -> Cgroup | None:
        base = own_cgroup()
        if base is None:
            return None
        path = os.path.join(base, leaf)
        try:
            os.mkdir(path)
        except OSError:
            return None
        if not os.path.isfile(os.path.join(path, "cgroup.procs")):
            with contextlib.suppress(OSError):
                os.rmdir(path)
            return None
        return cls(path)

    @classmethod
    def existing(cls, path: str) -> Cgroup | None:
        """A run's cgroup named in its owner file: only a folder of ours, on a cgroup2 mount."""
        if not isinstance(path, str) or not os.path.basename(path).startswith(RUN_PREFIX):
            return None
        if not any(path.startswith(point.rstrip("/") + "/") for _, point in _cgroup2_mounts()):
            return None
        return cls(path) if os.path.isfile(os.path.join(path, "cgroup.procs")) else None

    def add(self, pid: int) -> bool:
        try:
            with open(os.path.join(self.path, "cgroup.procs"), "w", encoding="ascii") as f:
                f.write(str(pid))
        except OSError:
            return False
        return True

    def procs(self) -> set[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs"), encoding="ascii") as f:
                return {int(x) for x in f.read().split()}
        except (OSError, ValueError):
            return set()

    def kill(self) -> bool:
        """SIGKILL everything in it at once (Linux 5.14+); False where there is no cgroup.kill."""
        try:
            with open(os.path.join(self.path, "cgroup.kill"), "w", encoding="ascii") as f:
                f.write("1")
        except OSError:
            return False
        return True

    def remove(self, timeout: float = 1.0) -> bool:
        """rmdir it (refused while a process is still in it)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.02)


def _boot_id() -> str:
    try:
        with open(f"{PROC}/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink(f"{PROC}/self/ns/pid")
    except OSError:
        return ""


class Tracker:
    """Every process of one run, each recorded with its start time, and how to stop them all."""

    def __init__(self, run_dir: str | None = None, *, cgroup: bool = True, subreaper: bool = True):
        self.me = os.getpid()
        self.run_dir = run_dir
        self.proc = os.path.isdir(PROC)
        self.known: dict[int, int | None] = {}  # pid -> start time, as first seen
        self.names: dict[int, str] = {}
        self.mentioned: set[int] = set()  # pids the run's processes reported (rank files)
        self.stopped: set[int] = set()
        self.root: int | None = None
        self.root_start: int | None = None
        self.subreaper = subreaper and become_subreaper()
        # this process's own children from before the run (a caller's subprocesses) are not the run's
        self.foreign = {p: start_time(p) for p in process_tree(self.me, group=False) - {self.me}} if self.proc else {}
        use = cgroup and os.environ.get(NO_CGROUP, "") in ("", "0") and sys.platform.startswith("linux")
        self.cgroup = Cgroup.create(os.path.basename(run_dir) if run_dir else f"{RUN_PREFIX}{self.me}-{time.time_ns()}") if use else None
        self.save()

    @property
    def tracking(self) -> str:
        """How the run's processes are found: cgroup, subreaper, or process tree (the weakest)."""
        return "cgroup" if self.cgroup is not None else "subreaper" if self.subreaper else "process tree"

    def adopt(self, pid: int) -> None:
        """The kernel: moved into the run's cgroup before it runs any cell."""
        self.root, self.root_start = pid, start_time(pid)
        if self.cgroup is not None:
            tree = process_tree(pid)
            if not self.cgroup.add(pid):
                self.cgroup.remove(0)
                self.cgroup = None
            else:
                for p in tree - {pid}:
                    self.cgroup.add(p)
        self.note()

    def save(self) -> None:
        """owner.json in the run folder, so that a later run can clean up after a SIGKILL of this one."""
        if not self.run_dir:
            return
        data = {
            "pid": self.me,
            "start": start_time(self.me),
            "boot": _boot_id(),
            "pidns": _pid_namespace(),
            "cgroup": self.cgroup.path if self.cgroup is not None else None,
            "processes": {str(p): s for p, s in self.known.items() if s is not None},
        }
        path = os.path.join(self.run_dir, OWNER)
        with contextlib.suppress(OSError):
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(path + ".tmp", path)

    def _scan(self) -> set[int]:
        found: set[int] = set()
        if self.cgroup is not None:
            found |= self.cgroup.procs()
        if self.root is not None and start_time(self.root) in (None, self.root_start):  # not a reused pid
            found |= process_tree(self.root)
        if self.subreaper:  # orphans of the kernel's tree are re-parented here
            skip = {p for p, s in self.foreign.items() if start_time(p) == s}
            found |= process_tree(self.me, group=False, skip=skip) - {self.me}
        found.discard(self.me)
        return found

    def note(self) -> set[int]:
        """Record every process of the run running now; return them."""
        running = set()
        changed = False
        for pid in self._scan():
            start = start_time(pid)
            if not alive(pid):
                continue
            running.add(pid)
            if self.known.get(pid, -1) != start:
                self.known[pid] = start
                self.names[pid] = name(pid)
                changed = True
        for pid, start in self.known.items():  # recorded, left the tree without a subreaper or cgroup
            if start is not None and pid not in running and start_time(pid) == start and alive(pid):
                running.add(pid)
        if changed:
            self.save()
        return running

    def mention(self, pids) -> None:
        self.mentioned |= {p for p in pids if p}

    def _reap(self) -> None:
        for pid in self.known:
            with contextlib.suppress(OSError):
                os.waitpid(pid, os.WNOHANG)

    def kill(self) -> set[int]:
        """SIGKILL once every process of the run running now (checked by start time); return them."""
        running = self.note()
        if self.cgroup is not None:
            self.cgroup.kill()
        for pid in running:
            kill_verified(pid, self.known.get(pid))
        self.stopped |= running  # running now, and the run's: stopped, unless `stop` finds it left
        return running

    def stop(self, timeout: float = 5.0) -> list[int]:
        """Kill until nothing of the run runs (new processes may be born while killing); return the
        pids still running after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            running = self.kill()
            self._reap()
            running = {p for p in running | self.note() if alive(p)}
            if not running:
                return []
            if time.monotonic() >= deadline:
                self.stopped -= running
                return sorted(running)
            time.sleep(0.02)

    def close(self) -> list[int]:
        """Stop what is left and remove the cgroup; return the pids that could not be stopped."""
        left = self.stop()
        if self.cgroup is not None and not left:
            self.cgroup.remove()
        return left

    @property
    def seen(self) -> set[int]:
        return set(self.known) | self.mentioned


def _read_owner(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, OWNER), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int) or not isinstance(data.get("start"), int):
        return None
    return data


def clean_stale(directory: str | None = None) -> list[str]:
    """Remove the temporary folders of runs killed with SIGKILL, and stop what they left running.

    Only folders named `nbrefactor-run-*`, owned by this user, holding an owner.json whose `run`
    process is gone (its pid dead, or now another process: its start time differs); a folder without
    one is left alone (a run that is just starting, or not nbrefactor's). Processes are only stopped
    on the same boot and in the same pid namespace, in the run's own cgroup or with the start time
    recorded for them. Returns one line per folder removed."""
    directory = directory or tempfile.gettempdir()
    if not os.path.isdir(PROC):
        return []  # cannot tell a dead owner from a live one
    notes = []
    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith(RUN_PREFIX)]
    except OSError:
        return []
    boot, pidns = _boot_id(), _pid_namespace()
    for entry in entries:
        try:
            st = os.lstat(entry.path)
        except OSError:
            continue
        if not stat_.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        owner = _read_owner(entry.path)
        if owner is None:
            continue
        same_boot = owner.get("boot") == boot
        if same_boot and owner.get("pidns") != pidns:
            continue  # another pid namespace: its pids mean nothing here
        if same_boot and start_time(owner["pid"]) == owner["start"]:
            continue  # its run is still running
        stopped: set[int] = set()
        if same_boot:
            group = Cgroup.existing(owner.get("cgroup"))
            recorded = owner.get("processes") if isinstance(owner.get("processes"), dict) else {}
            for _ in range(50):
                running = {p for p in (group.procs() if group is not None else ()) if alive(p)}
                for pid, start in recorded.items():
                    with contextlib.suppress(ValueError, TypeError):
                        if start_time(int(pid)) == start and alive(int(pid)):
                            running.add(int(pid))
                if not running:
                    break
                if group is not None:
                    group.kill()
                for pid in running:
                    if kill_verified(pid, recorded[str(pid)] if str(pid) in recorded else start_time(pid)):
                        stopped.add(pid)
                time.sleep(0.02)
            if group is not None:
                group.remove()
        shutil.rmtree(entry.path, ignore_errors=True)
        what = f", and stopped {len(stopped)} of its processes" if stopped else ""
        notes.append(f"removed {entry.path}, left by nbrefactor run (pid {owner['pid']}) that was killed{what}")
    return notes


def _ephemeral_ports() -> tuple[int, int]:
    """The range the system draws the local port of every outgoing connection from."""
    try:
        with open(f"{PROC}/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low, high = (int(x) for x in f.read().split()[:2])
            return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return not port_listening(port)


def free_port() -> int:
    """A TCP port nobody listens on now, for MASTER_PORT, drawn below the ephemeral range.

    The port is chosen when the run starts and bound only when the notebook launches, seconds later.
    A port from the ephemeral range (what `bind(0)` gives) can meanwhile become the local end of any
    outgoing connection on the machine (the kernel's own ZeroMQ sockets, another run's rendezvous),
    and the launch then fails with EADDRINUSE; ports below that range are only taken by explicit binds.
    """
    low, _high = _ephemeral_ports()
    if low > 10000:
        rng = random.SystemRandom()
        for _ in range(64):
            port = rng.randrange(10000, low)
            if _bindable(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_listening(port: int) -> bool:
    """Whether some process listens on TCP `port` (any address, IPv4 or IPv6)."""
    tables = [f"{PROC}/net/tcp", f"{PROC}/net/tcp6"]
    if any(os.path.exists(t) for t in tables):
        for table in tables:
            try:
                with open(table, encoding="ascii") as f:
                    next(f, None)
                    for line in f:
                        fields = line.split()
                        local, state = fields[1], fields[3]
                        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                            return True
            except OSError:
                continue
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False
