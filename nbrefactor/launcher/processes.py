"""Processes and ports, read from /proc without psutil: what a run must not leave behind.

A forked training process keeps the GPU and the rendezvous port (`MASTER_PORT`) until it exits; a
kernel killed mid-launch leaves its children running. These functions find the kernel's whole
process tree, kill it, and check that nothing of it is left. On systems without /proc they fall back
to `os.kill(pid, 0)` and to binding the port.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sys
import time

PROC = "/proc"


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, or None when it does not exist."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return rest[0], int(rest[1]), int(rest[2])


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


def process_tree(root: int) -> set[int]:
    """`root` and every running process below it, or in its process group (a kernel runs in a session
    of its own, so its group is exactly what it started)."""
    if not os.path.isdir(PROC):
        return {root} if alive(root) else set()
    parents: dict[int, int] = {}
    group: set[int] = set()
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        stat = _stat(int(name))
        if stat is None or stat[0] in ("Z", "X"):
            continue
        parents[int(name)] = stat[1]
        if stat[2] == root:
            group.add(int(name))
    tree = {root} if root in parents else set()
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                changed = True
    return tree | group


def kill_all(pids, group: int | None = None) -> None:
    """SIGKILL a process group and a set of processes; gone or not ours is fine."""
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


def free_port() -> int:
    """A TCP port nobody listens on now (for MASTER_PORT)."""
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
