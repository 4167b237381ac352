"""Run a notebook in a fresh Jupyter kernel, one cell at a time, and leave nothing behind.

The kernel is a real ipykernel driven by nbclient, so `fabric.launch` and `trainer.fit` fork from an
interactive process exactly as they do for the user (Lightning checks `sys.ps1`). It is this
Python (`sys.executable`), whatever kernels Jupyter has installed: the one that has torch and
Lightning because nbrefactor's `run` extra put them there.

Before the first cell the preamble (`preamble.py`) is loaded into the kernel. The runner tells it
which cell is running by writing the cell's index to a file in the run folder before sending the
cell; the kernel and its forked children report back through files in the same folder, which the
runner reads after the kernel is gone, so a crash or a kill loses nothing.

A time limit or Ctrl-C stops the cell being run, then every process of the run is killed and the
runner checks that none of it is left and that the rendezvous port is free. "Every process" is what
`processes.Tracker` follows: the run's own cgroup where one can be created (the kernel is moved into
it before its first cell, so a new session or a double fork cannot leave it), else the kernel's tree
plus its orphans (`run` is their subreaper); a pid is only killed while its start time is the one
recorded for it. The run folder (with the kernel's connection file) is removed on every exit,
SIGTERM included; after a SIGKILL, the next run removes it (`processes.clean_stale`).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from nbrefactor.launcher import preamble, processes
from nbrefactor.launcher.progress import Progress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class LauncherError(Exception):
    """The launcher could not run the notebook at all (no kernel, a broken preamble): exit 2."""


@dataclass
class RunSettings:
    accelerator: str = "auto"  # auto, cpu, cuda
    devices: int | None = None  # None: every GPU, or 2 processes on CPU
    smoke: bool = True
    timeout: float | None = 600.0  # for the whole run; None for no limit
    verbose: bool = False
    smoke_batches: int = 2
    startup_timeout: float = 60.0


@dataclass
class CellRun:
    number: int  # 1-based over all cells
    cell_type: str
    status: str  # ok, failed, timeout, interrupted, kernel died, not run, skipped
    seconds: float | None = None
    error: dict | None = None  # {"ename", "evalue", "traceback"} as the notebook showed it


@dataclass
class RunResult:
    outcome: str  # completed, failed, timeout, interrupted, kernel died
    cells: list[CellRun]
    seconds: float
    events: list[dict] = field(default_factory=list)
    ranks: list[dict] = field(default_factory=list)
    kernel_pid: int | None = None
    pids: list[int] = field(default_factory=list)  # every process of the run that was seen
    leftovers: list[int] = field(default_factory=list)  # of those, still running after cleanup
    stopped: list[int] = field(default_factory=list)  # of those, running at cleanup and killed by it
    names: dict[int, str] = field(default_factory=dict)  # pid -> command name, as first seen
    tracking: str = ""  # cgroup, subreaper or process tree: how the run's processes were found
    ports: dict[int, bool] = field(default_factory=dict)  # rendezvous port -> still listening
    executed: object | None = None  # the notebook with outputs (nbformat node)
    kernel_log: str = ""


def plain(text: str) -> str:
    return ANSI.sub("", text)


def code_cells(nb) -> list[int]:
    """Indices of the cells that run: code cells with something in them (as nbclient decides)."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]


def run_notebook(nb, *, cwd: str, settings: RunSettings, progress: Progress | None = None) -> RunResult:
    """Run `nb` (an nbformat v4 node, modified in place with outputs) in a kernel started in `cwd`."""
    for note in processes.clean_stale():
        print(f"note: {note}", file=sys.stderr)
    with _terminate_unwinds():
        run_dir = tempfile.mkdtemp(prefix=processes.RUN_PREFIX)
        try:
            tracker = processes.Tracker(run_dir)
            try:
                return asyncio.run(_Run(nb, cwd, settings, progress, run_dir, tracker).main())
            finally:
                with _signals_held():
                    tracker.close()  # whatever way out: nothing of the run keeps running
        finally:
            with _signals_held():
                shutil.rmtree(run_dir, ignore_errors=True)


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C and SIGTERM wait until the clean-up is done (they are delivered after it)."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError, OSError):  # not on this platform
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


@contextlib.contextmanager
def _terminate_unwinds():
    """SIGTERM outside the kernel's run (where it stops the run like Ctrl-C) exits through the
    `finally` blocks, as Ctrl-C does, instead of leaving the run folder behind: exit 143."""
    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Stopped(Exception):
    def __init__(self, reason: str):
        self.reason = reason


class _Run:
    def __init__(self, nb, cwd, settings: RunSettings, progress: Progress | None, run_dir: str, tracker: processes.Tracker):
        self.nb = nb
        self.cwd = cwd
        self.settings = settings
        self.progress = progress
        self.run_dir = run_dir
        self.port = processes.free_port()
        self.km = None
        self.kc = None
        self.client = None
        self.kernel_pid = None
        self.tracker = tracker
        self.current: asyncio.Future | None = None
        self.interrupted = False
        self.deadline = time.monotonic() + settings.timeout if settings.timeout else None
        self.cells = [CellRun(i + 1, c.cell_type, "skipped" if c.cell_type != "code" else "not run") for i, c in enumerate(nb.cells)]
        for i, c in enumerate(nb.cells):
            if c.cell_type == "code" and not c.source.strip():
                self.cells[i].status = "skipped"

    # -- signals --------------------------------------------------------------------------

    def _on_signal(self) -> None:
        """Ctrl-C (or SIGTERM): stop what is running; cleanup follows in `main`."""
        if self.interrupted:  # a second Ctrl-C: kill now, cleanup still runs
            self.tracker.kill()
        self.interrupted = True
        if self.current is not None:
            self.current.cancel()

    @contextlib.contextmanager
    def _signals(self):
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous = signal.getsignal(sig)
                loop.add_signal_handler(sig, self._on_signal)
                installed.append((sig, previous))
            except (RuntimeError, ValueError, NotImplementedError):  # not the main thread
                pass
        try:
            yield
        finally:
            for sig, previous in installed:
                loop.remove_signal_handler(sig)  # resets SIGTERM to its default, which skips cleanup
                if previous is not None:
                    signal.signal(sig, previous)

    async def _await(self, awaitable):
        """Await something a time limit or Ctrl-C may stop; raise `_Stopped` when one does."""
        if self.interrupted:  # Ctrl-C came between two steps
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise _Stopped("interrupted")
        task = asyncio.ensure_future(awaitable)
        self.current = task
        timeout = None if self.deadline is None else max(self.deadline - time.monotonic(), 0)
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        finally:
            self.current = None
        if self.interrupted or not done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise _Stopped("interrupted" if self.interrupted else "timeout")
        return task.result()

    # -- the run --------------------------------------------------------------------------

    async def main(self) -> RunResult:
        started = time.monotonic()
        outcome = "completed"
        ticker = asyncio.ensure_future(self._tick()) if self.progress is not None and self.progress.tty else None
        watcher = asyncio.ensure_future(self._watch())
        try:
            with self._signals():
                try:
                    await self._start_kernel()
                    await self._load_preamble()
                    outcome = await self._run_cells()
                except _Stopped as stop:
                    outcome = stop.reason
                finally:
                    leftovers, ports, log = await self._stop()
        finally:
            watcher.cancel()
            if ticker is not None:
                ticker.cancel()
            if self.progress is not None:
                self.progress.close()
        if outcome == "timeout" and self.client is None:
            raise LauncherError("the time limit passed while the kernel was starting")
        events = _read_events(self.run_dir)
        ranks = _read_ranks(self.run_dir)
        self.tracker.mention(r["pid"] for r in ranks if isinstance(r.get("pid"), int))
        return RunResult(
            outcome=outcome,
            cells=self.cells,
            seconds=time.monotonic() - started,
            events=events,
            ranks=ranks,
            kernel_pid=self.kernel_pid,
            pids=sorted(self.tracker.seen),
            leftovers=leftovers,
            stopped=sorted(self.tracker.stopped),
            names=dict(self.tracker.names),
            tracking=self.tracker.tracking,
            ports=ports,
            executed=self.nb,
            kernel_log=log,
        )

    async def _watch(self) -> None:
        """Record the run's processes (with their start times, in the run folder) while cells run, so
        that a later run can stop them should this one be killed with SIGKILL."""
        while True:
            await asyncio.sleep(1.0)
            if self.kernel_pid:
                self.tracker.note()

    async def _tick(self) -> None:
        """Redraw the progress bar so the elapsed time moves while a long cell runs."""
        while True:
            await asyncio.sleep(0.5)
            ranks = _read_ranks(self.run_dir)
            last = max((r.get("launch", 0) for r in ranks), default=0)
            busy = [r for r in ranks if r.get("launch") == last and r.get("status") in ("started", "returned")]
            self.progress.note = f"launch {last}: {len(busy)} rank{'s' * (len(busy) != 1)} running" if busy else ""
            self.progress.draw()

    async def _start_kernel(self) -> None:
        from jupyter_client import AsyncKernelManager
        from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

        class ThisPython(KernelSpecManager):
            def get_kernel_spec(self, kernel_name):
                return KernelSpec(
                    argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    display_name="Python (nbrefactor run)",
                    language="python",
                    resource_dir="",
                )

        env = dict(os.environ)
        env["MASTER_PORT"] = str(self.port)
        env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiet the debugger's frozen-modules warning
        env.pop("LT_CLI_USED", None)  # would make Fabric refuse to launch
        self.log = open(os.path.join(self.run_dir, "kernel.log"), "wb")  # noqa: SIM115 - closed in _stop
        self.km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())
        self.km.connection_file = os.path.join(self.run_dir, "kernel.json")  # not in Jupyter's runtime folder: goes with the run folder
        try:
            await self._await(self.km.start_kernel(env=env, cwd=self.cwd, stdout=self.log, stderr=self.log))
        except _Stopped:
            raise
        except Exception as err:
            raise LauncherError(f"could not start a Python kernel ({sys.executable}): {err}") from None
        self.kernel_pid = self.km.provisioner.pid if self.km.provisioner else None
        if self.kernel_pid:
            self.tracker.adopt(self.kernel_pid)  # before any cell runs
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            await self._await(self.kc.wait_for_ready(timeout=self.settings.startup_timeout))
        except _Stopped:
            raise
        except Exception as err:
            raise LauncherError(f"the Python kernel did not start: {err}{_tail(self.run_dir)}") from None

    async def _load_preamble(self) -> None:
        config = {
            "run_dir": self.run_dir,
            "accelerator": self.settings.accelerator,
            "devices": self.settings.devices,
            "smoke": self.settings.smoke,
            "smoke_batches": self.settings.smoke_batches,
            "smoke_root_dir": os.path.join(self.run_dir, "lightning"),
        }
        config_path = os.path.join(self.run_dir, "config.json")
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f)
        self.client = _client(self.nb, self.km, self.cwd, self.progress)
        self.client.kc = self.kc
        code = preamble.load_source(preamble.__file__, config_path)
        msg_id = self.kc.execute(code, silent=True, store_history=False)
        reply = await self._await(self.client.async_wait_for_reply(msg_id))
        content = (reply or {}).get("content", {})
        if content.get("status") != "ok":
            raise LauncherError(f"the launcher's preamble failed in the kernel: {content.get('ename')}: {content.get('evalue')}")

    async def _run_cells(self) -> str:
        from nbclient.exceptions import CellExecutionError, DeadKernelError

        runnable = code_cells(self.nb)
        count = 0
        for index in runnable:
            cell = self.nb.cells[index]
            run = self.cells[index]
            with open(os.path.join(self.run_dir, "cell"), "w", encoding="utf-8") as f:
                f.write(str(index))
            if self.progress is not None:
                self.progress.start_cell(index + 1, cell.source)
            count += 1
            started = time.monotonic()
            outcome = None
            try:
                await self._await(self.client.async_execute_cell(cell, index, execution_count=count))
                run.status = "ok"
            except _Stopped as stop:
                run.status = stop.reason
                outcome = stop.reason
            except CellExecutionError as err:
                run.status = "failed"
                run.error = _error_output(cell, err)
                outcome = "failed"
            except DeadKernelError:
                run.status = "kernel died"
                outcome = "kernel died"
            finally:
                run.seconds = time.monotonic() - started
                self._note_processes()
                if self.progress is not None:
                    self.progress.end_cell(index + 1, run.status, run.seconds)
            if outcome is not None:
                if outcome in ("interrupted", "timeout"):
                    raise _Stopped(outcome)
                return outcome
        return "completed"

    def _note_processes(self) -> None:
        self.tracker.note()

    async def _stop(self) -> tuple[list[int], dict[int, bool], str]:
        """Kill the kernel and everything it started; say what (if anything) is still there."""
        # SIGKILL first: jupyter_client's shutdown interrupts the kernel's process group before it
        # kills, and a KeyboardInterrupt in the children would be reported as their failure
        self.tracker.kill()
        if self.kc is not None:
            with contextlib.suppress(Exception):
                self.kc.stop_channels()
        if self.km is not None and self.km.has_kernel:
            try:
                await asyncio.wait_for(self.km.shutdown_kernel(now=True), 10)
            except BaseException:  # noqa: BLE001 - the kill above did the job
                pass
        left = self.tracker.stop()
        if self.km is not None:
            with contextlib.suppress(Exception):
                pending = self.km.cleanup_resources()
                if asyncio.iscoroutine(pending):
                    await pending
        log = getattr(self, "log", None)
        if log is not None:
            log.close()
        ports = {self.port}
        for event in _read_events(self.run_dir):
            if event.get("event") == "launch" and event.get("port"):
                ports.add(int(event["port"]))
        listening = {p: processes.port_listening(p) for p in sorted(ports)}
        for _ in range(50):  # a socket closes a moment after its process is gone
            if not any(listening.values()):
                break
            time.sleep(0.02)
            listening = {p: processes.port_listening(p) for p in listening}
        return sorted(left), listening, _tail(self.run_dir, plain_only=True)


def _client(nb, km, cwd, progress):
    from nbclient import NotebookClient

    class Client(NotebookClient):
        def output(self, outs, msg, display_id, cell_index):
            out = super().output(outs, msg, display_id, cell_index)
            if progress is not None and progress.verbose:
                progress.output(_output_text(msg))
            return out

    return Client(nb, km=km, timeout=None, allow_errors=False, resources={"metadata": {"path": cwd}})


def _output_text(msg: dict) -> str:
    content = msg.get("content", {})
    kind = msg.get("msg_type")
    if kind == "stream":
        return content.get("text", "")
    if kind == "error":
        return plain("\n".join(content.get("traceback", [])))
    if kind in ("execute_result", "display_data"):
        return content.get("data", {}).get("text/plain", "")
    return ""


def _error_output(cell, err) -> dict:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return {"ename": out.get("ename"), "evalue": out.get("evalue"), "traceback": plain("\n".join(out.get("traceback", [])))}
    return {"ename": getattr(err, "ename", "Error"), "evalue": getattr(err, "evalue", str(err)), "traceback": plain(str(err))}


def _read_events(run_dir: str) -> list[dict]:
    events = []
    with contextlib.suppress(OSError), open(os.path.join(run_dir, "events.jsonl"), encoding="utf-8") as f:
        for line in f:
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
    return events


def _read_ranks(run_dir: str) -> list[dict]:
    ranks = []
    for path in glob.glob(os.path.join(run_dir, "rank-*.json")):
        with contextlib.suppress(OSError, json.JSONDecodeError):
            ranks.append(json.loads(Path(path).read_text(encoding="utf-8")))
    return sorted(ranks, key=lambda r: (r.get("launch", 0), r.get("rank", 0)))


def _tail(run_dir: str, plain_only: bool = False, limit: int = 4000) -> str:
    try:
        text = Path(run_dir, "kernel.log").read_bytes().decode(errors="replace")
    except OSError:
        return ""
    text = text[-limit:]
    return text if plain_only else (f"\n{text}" if text.strip() else "")
