"""Check and fix run in worker processes, so that no notebook can take the Jupyter server down.

One process per request, forked from a small fork server of nbrefactor's own:

* The fork server is `python -c "...serve(fd)"`, started (with `subprocess`, i.e. fork+exec, never a
  bare fork of the multi-threaded Jupyter server) the first time it is needed. It imports libcst and
  nbrefactor once, then forks one worker per request, so a worker starts in milliseconds with all of
  that already loaded. It talks to the server over a Unix socket pair (SOCK_SEQPACKET): "run job N"
  (with the job's own socket passed along, SCM_RIGHTS), "kill job N"; it answers "job N started as
  pid P", "job N exited with status S". It reaps its workers, so the server never has zombies, and
  a kill can never hit a reused pid. When the server goes away (its end of the socket closes) it
  kills its workers and exits; workers also die with it (PR_SET_PDEATHSIG on Linux).
* A worker reads the request body from its socket, sets its limits (RLIMIT_AS for memory; a CPU
  limit and an alarm a little past the time limit, as backstops if the server cannot kill it; no
  core files), does the work, writes one header line and the reply JSON, and exits.
* The server side (`ForkServer.run`) is asyncio all the way: it sends the body, reads the reply,
  kills the worker when the time limit passes or when `Job.cancel()` is called (the client went
  away), and says how it ended (`Outcome`). No thread waits on a worker, and no request waits
  behind another one: each has its own process, and the OS shares the CPUs between them.

Why not `multiprocessing`'s "forkserver" context: on Python 3.11 to 3.13 its workers re-run the
parent's `__main__` script when it is a file (the `jupyter-lab` console script imports all of
JupyterLab: 7.5 s per worker on the development machine, measured, even with "__main__" in the
preload list), `Process.start()` blocks while the fork server starts, and its fork server is one
per process, shared with whatever else in the server uses it.

This module imports nothing from tornado or jupyter_server: the fork server and the workers load
only what the work needs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import traceback
from dataclasses import dataclass, field

# Imported by the fork server before its first fork, so a worker starts with them loaded.
PRELOAD = (
    "ctypes",
    "resource",
    "libcst",
    "nbrefactor.errors",
    "nbrefactor.notebook.model",
    "nbrefactor.checker",
    "nbrefactor.fixer",
    "nbrefactor.celldiff",
    "nbrefactor.server.api",
)

_MESSAGE_BYTES = 65536  # one control message (JSON) at most


# --- the fork server (its own process) -------------------------------------------------------


def serve(control_fd: int) -> None:
    """The fork server's loop: preload, then fork a worker per "run" message until the Jupyter
    server closes its end of the control socket."""
    import importlib
    import select

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in Jupyter's terminal is for Jupyter
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # the fixer may be missing: the worker says so (501)
            pass
    _warm_up()
    control = socket.socket(fileno=control_fd)
    control.setblocking(True)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select below through wake_w
    pids: dict[int, int] = {}  # job -> pid, until reaped

    def send(message: dict) -> None:
        try:
            control.send(json.dumps(message).encode())
        except OSError:
            pass

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            job = next((j for j, p in pids.items() if p == pid), None)
            if job is not None:
                del pids[job]
                send({"op": "exited", "job": job, "status": status})

    try:
        while True:
            readable, _, _ = select.select([control, wake_r], [], [])
            if wake_r in readable:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                reap()
            if control not in readable:
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(control, _MESSAGE_BYTES, 1)
            except OSError:
                return
            if not data:
                return  # the server is gone
            message = json.loads(data)
            if message.get("op") == "kill":
                pid = pids.get(message["job"])
                if pid is not None:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                continue
            if message.get("op") != "run" or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                continue
            try:
                pid = os.fork()
            except OSError as err:
                os.close(fds[0])
                send({"op": "failed", "job": message["job"], "message": f"cannot start a worker process: {err.strerror or err}"})
                continue
            if pid == 0:  # the worker
                code = 70
                try:
                    control.close()
                    signal.set_wakeup_fd(-1)
                    os.close(wake_r)
                    os.close(wake_w)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    code = _worker(fds[0], message)
                finally:
                    os._exit(code)
            os.close(fds[0])
            pids[message["job"]] = pid
            send({"op": "started", "job": message["job"], "pid": pid})
    finally:
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _warm_up() -> None:
    """Check and fix a small notebook once, so that what nbrefactor imports or builds only when it
    first works (libcst's native parser, the rules, the codemods) is loaded before the first fork."""
    cells = [
        "import torch\nimport lightning as L\nfabric = L.Fabric(accelerator='cuda', devices=2, strategy='ddp_notebook')\nfabric.launch()\n",
        "model = torch.nn.Linear(2, 2).cuda()\nloader = torch.utils.data.DataLoader(range(4))\n",
    ]
    notebook = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"w{i}", "metadata": {}, "outputs": [], "source": s} for i, s in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    body = json.dumps({"notebook": notebook, "options": {"unsafe_fixes": True}}).encode()
    for work in ("nbrefactor.server.api:check", "nbrefactor.server.api:fix"):
        try:
            run(work, body)
        except BaseException:  # a warm-up only: the workers will report any real problem
            pass


# --- a worker (a child of the fork server) ---------------------------------------------------


def _worker(fd: int, spec: dict) -> int:
    _die_with_parent()
    _set_limits(spec.get("memory"), spec.get("seconds"))
    channel = socket.socket(fileno=fd)
    channel.setblocking(True)
    pieces = []
    while True:
        piece = channel.recv(1 << 20)
        if not piece:
            break
        pieces.append(piece)
    body = b"".join(pieces)
    del pieces
    header, payload = run(spec["work"], body)
    del body
    try:
        channel.sendall(json.dumps(header).encode() + b"\n")
        if payload:
            channel.sendall(payload)
    except OSError:  # the server is no longer listening (it killed or abandoned this job)
        return 0
    channel.close()
    return 0


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _set_limits(memory: int | None, seconds: float | None) -> None:
    try:
        import resource
    except ImportError:  # not a Unix: only the server's kill on timeout applies
        return

    def lower(which: int, soft: int, hard: int | None = None) -> None:
        _, current = resource.getrlimit(which)
        hard = soft if hard is None else hard
        if current != resource.RLIM_INFINITY:
            soft, hard = min(soft, current), min(hard, current)
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError):
            pass

    lower(resource.RLIMIT_CORE, 0)
    if memory:
        lower(resource.RLIMIT_AS, int(memory))
    if seconds:
        # Backstops: the server kills the worker at `seconds`; these end it if the server cannot.
        lower(resource.RLIMIT_CPU, int(seconds) + 5, int(seconds) + 10)
        signal.alarm(int(seconds) + 10)


def run(work: str, body: bytes) -> tuple[dict, bytes]:
    """The work named `work` ("module:function", a function of `api.Request` returning the reply
    dict) on the request `body`: (header, payload). The header's "status" is the HTTP status; a
    200 has the reply JSON as payload, anything else a one-line "message" (and, for a 500, the
    traceback for the server's log)."""
    from nbrefactor.errors import NotebookError, OverLimit
    from nbrefactor.server import api

    try:
        module, _, name = work.partition(":")
        function = __import__(module, fromlist=[name])
        for part in name.split("."):
            function = getattr(function, part)
        request = api.parse_request(body)
        del body
        from dataclasses import replace

        from nbrefactor import limits

        # The CLI's limits and recursion room for max-nesting, in this thread: a thread's start can
        # itself fail under a tight RLIMIT_AS, and the time and memory limits are the server's.
        limits.configure(replace(limits.active(), seconds=0))
        payload = json.dumps(limits.bounded(request.name, function, request, in_thread=False)).encode("utf-8")
        return {"status": 200, "length": len(payload)}, payload
    except api.BadRequest as err:
        return {"status": 400, "message": api._one_line(str(err))}, b""
    except NotebookError as err:
        message = err.message
        if isinstance(err, OverLimit):  # the server reads no pyproject.toml: say what applies here
            message = message.replace("in [tool.nbrefactor]", "with the CLI's [tool.nbrefactor]; the server uses the default limits")
        return {"status": 400, "message": api._one_line(message)}, b""
    except NotImplementedError as err:
        return {"status": 501, "message": api._one_line(str(err))}, b""
    except RecursionError:
        return {"status": 400, "limit": "depth"}, b""
    except MemoryError:
        return {"status": 413, "limit": "memory"}, b""
    except Exception as err:  # a bug in nbrefactor: one line for the user, the traceback for the log
        return {
            "status": 500,
            "message": f"nbrefactor failed: {type(err).__name__}: {api._one_line(str(err))}",
            "traceback": traceback.format_exc(),
        }, b""


# --- the server's side -----------------------------------------------------------------------


@dataclass
class Outcome:
    """How a job ended. `status` 200 with `payload` (the reply JSON, forwarded as is), or an error:
    `status` and a one-line `message`, or `limit` ("memory", "time", "depth", "died", "reply") for
    the handler to word with its settings; `cancelled` when `Job.cancel()` ended it."""

    status: int = 0
    payload: bytes = b""
    message: str = ""
    limit: str = ""
    detail: str = ""
    traceback: str = ""
    cancelled: bool = False


@dataclass
class Job:
    id: int
    server: ForkServer
    pid: int | None = None
    ended: bool = False  # the fork server has reaped the worker (or never started it)
    killed: str = ""  # why the server killed it: "time", "cancel", "reply"
    status: int | None = None  # its wait status
    _exited: object = None  # asyncio.Future set when the fork server reports the exit
    failed: str = ""

    def cancel(self) -> None:
        """Kill the worker (the client went away): the job ends with `cancelled`."""
        self.kill("cancel")

    def kill(self, why: str) -> None:
        if not self.ended and not self.killed:
            self.killed = why
            self.server._send({"op": "kill", "job": self.id})


@dataclass
class ForkServer:
    """The server's handle on the fork server; one per Jupyter server process (`FORK_SERVER`)."""

    _process: object = None
    _control: socket.socket | None = None
    _loop: object = None
    _next: int = 0
    _supported: bool | None = None
    jobs: dict = field(default_factory=dict)  # job id -> Job, while its worker may run

    def supported(self) -> bool:
        """Whether this platform has what the fork server needs (fork, SOCK_SEQPACKET Unix sockets,
        passing fds): Linux does; where it does not (macOS has no SOCK_SEQPACKET for Unix sockets,
        Windows no fork), the work runs in a thread of the server, as before worker processes."""
        if self._supported is None:
            try:
                a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                a.close()
                b.close()
                self._supported = hasattr(os, "fork") and hasattr(socket, "send_fds")
            except (AttributeError, OSError):
                self._supported = False
        return self._supported

    def running(self) -> list[int]:
        """The pids of the workers alive now (for tests and diagnostics)."""
        return [j.pid for j in self.jobs.values() if j.pid and not j.ended]

    def start(self) -> None:
        """Start the fork server if it is not running (it preloads in the background). Must be
        called on the event loop that will run the jobs."""
        import asyncio
        import subprocess

        loop = asyncio.get_running_loop()
        if self._control is not None and self._process is not None and self._process.poll() is None:
            if self._loop is not loop:  # a new event loop (tests start one per server)
                self._detach()
                self._loop = loop
                loop.add_reader(self._control.fileno(), self._on_control)
            return
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            code = f"import sys; sys.path[:] = {sys.path!r}; from nbrefactor.server.worker import serve; serve({theirs.fileno()})"
            self._process = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._control = ours
        self._loop = loop
        loop.add_reader(ours.fileno(), self._on_control)

    def _detach(self) -> None:
        if self._loop is not None and self._control is not None and not self._loop.is_closed():
            try:
                self._loop.remove_reader(self._control.fileno())
            except (ValueError, RuntimeError):
                pass
        for job in self.jobs.values():  # jobs of another event loop: nobody waits for them now
            job.kill("cancel")
            job.ended = True
        self.jobs.clear()

    def _stop(self) -> None:
        self._detach()
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            try:
                self._process.kill()
                self._process.wait(timeout=5)
            except Exception:
                pass
            self._process = None

    def close(self) -> None:
        """Stop the fork server and with it every worker."""
        self._stop()
        self._loop = None

    def _send(self, message: dict, fds: list[int] = ()) -> bool:
        if self._control is None:
            return False
        try:
            socket.send_fds(self._control, [json.dumps(message).encode()], list(fds))
        except OSError:
            return False
        return True

    def _on_control(self) -> None:
        while self._control is not None:
            try:
                data = self._control.recv(_MESSAGE_BYTES)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # the fork server died: fail what was running; the next job restarts it
                for job in list(self.jobs.values()):
                    job.failed = job.failed or "nbrefactor's worker processes stopped"
                    self._ended(job, None)
                self._stop()
                return
            message = json.loads(data)
            job = self.jobs.get(message.get("job"))
            if job is None:
                continue
            op = message.get("op")
            if op == "started":
                job.pid = message["pid"]
                if job.killed:  # killed before it started
                    self._send({"op": "kill", "job": job.id})
            elif op == "exited":
                self._ended(job, message["status"])
            elif op == "failed":
                job.failed = message.get("message", "cannot start a worker process")
                self._ended(job, None)

    def _ended(self, job: Job, status: int | None) -> None:
        job.ended = True
        job.status = status
        self.jobs.pop(job.id, None)
        if job._exited is not None and not job._exited.done():
            job._exited.set_result(None)

    def submit(self, work: str, body: bytes, *, memory: int, seconds: float, max_reply: int):
        """Start a job; returns (job, awaitable of its Outcome). Raises OSError when no worker
        can be started."""
        import asyncio

        if not self.supported():
            return _ThreadJob(), _in_thread(work, body, seconds)
        self.start()
        loop = asyncio.get_running_loop()
        self._next += 1
        job = Job(self._next, self, _exited=loop.create_future())
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            spec = {"op": "run", "job": job.id, "work": work, "memory": memory, "seconds": seconds}
            if not self._send(spec, [theirs.fileno()]):
                ours.close()
                raise OSError("cannot reach nbrefactor's fork server")
        finally:
            theirs.close()
        ours.setblocking(False)
        self.jobs[job.id] = job
        return job, self._exchange(job, ours, body, seconds, max_reply)

    async def _exchange(self, job: Job, channel: socket.socket, body: bytes, seconds: float, max_reply: int) -> Outcome:
        import asyncio

        loop = asyncio.get_running_loop()
        received = bytearray()

        async def talk() -> None:
            try:
                await loop.sock_sendall(channel, body)
                channel.shutdown(socket.SHUT_WR)
            except OSError:  # the worker is gone already: its exit status says why
                return
            while True:
                try:
                    piece = await loop.sock_recv(channel, 1 << 20)
                except OSError:
                    return
                if not piece:
                    return
                received.extend(piece)
                if len(received) > max_reply:
                    job.kill("reply")
                    return

        try:
            try:
                await asyncio.wait_for(talk(), timeout=seconds)
            except asyncio.TimeoutError:
                job.kill("time")
            except asyncio.CancelledError:
                job.kill("cancel")
                raise
        finally:
            channel.close()
        if not job.killed:
            newline = received.find(b"\n")
            if newline >= 0:
                try:
                    header = json.loads(received[:newline])
                except ValueError:
                    header = {}
                status = header.get("status")
                if status == 200 and header.get("length") == len(received) - newline - 1:
                    del received[: newline + 1]
                    return Outcome(200, bytes(received))
                if isinstance(status, int) and status != 200:
                    return Outcome(status, message=header.get("message", ""), limit=header.get("limit", ""),
                                   traceback=header.get("traceback", ""))
        # No (whole) reply: the worker was killed, or died. Its exit status says how.
        del received[:]
        try:
            await asyncio.wait_for(asyncio.shield(job._exited), timeout=5)
        except asyncio.TimeoutError:
            pass
        if job.killed == "cancel":
            return Outcome(cancelled=True)
        if job.killed == "time":
            return Outcome(504, limit="time")
        if job.killed == "reply":
            return Outcome(413, limit="reply")
        if job.failed:
            return Outcome(503, message=job.failed)
        if job.status is not None and -os.waitstatus_to_exitcode(job.status) in (signal.SIGXCPU, signal.SIGALRM):
            return Outcome(504, limit="time")  # the worker's own backstops: its time was up
        return Outcome(413, limit="died", detail=_how_it_ended(job.status))


class _ThreadJob:
    """A job run in a thread of the server (no worker processes here): it cannot be killed."""

    pid = None

    def cancel(self) -> None:
        pass


_THREADS = None


async def _in_thread(work: str, body: bytes, seconds: float) -> Outcome:
    """The fallback without worker processes: the work in a small thread pool (no memory limit,
    and past the time limit the reply is a 504 while the thread runs on)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    global _THREADS
    if _THREADS is None:
        _THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="nbrefactor")
    future = asyncio.get_running_loop().run_in_executor(_THREADS, run, work, body)
    try:
        header, payload = await asyncio.wait_for(future, timeout=seconds)
    except asyncio.TimeoutError:
        return Outcome(504, limit="time")
    if header["status"] == 200:
        return Outcome(200, payload)
    return Outcome(header["status"], message=header.get("message", ""), limit=header.get("limit", ""), traceback=header.get("traceback", ""))


def _how_it_ended(status: int | None) -> str:
    if status is None:
        return "it ended without a reply"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"its process was killed by {name}"
    return f"its process exited with code {code} without a reply"


FORK_SERVER = ForkServer()
