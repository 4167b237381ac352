"""The server extension under hostile or heavy requests: it answers, and it stays up.

Through a real jupyter_server (pytest-jupyter), like tests/test_lab_server.py, plus raw sockets
where the test must control the bytes on the wire (a Content-Length that is never honoured, a
chunked body, a client that goes away). The slow request is a real one: fixing a notebook of
3,000 small cells takes seconds (11 s on the loaded 2-core development machine), where a small
notebook takes tens of milliseconds; the tests compare orders of events rather than absolute
times, and their time ceilings are generous.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time

import pytest

pytest.importorskip("jupyter_server", reason="the lab extra (jupyter_server) is not installed")
pytest.importorskip("pytest_jupyter.jupyter_server", reason="pytest-jupyter[server] is not installed")

from pytest_jupyter.jupyter_server import *  # noqa: E402,F403  (fixtures: jp_fetch, jp_serverapp, ...)
from traitlets.config import Config  # noqa: E402

from hostile import FABRIC, TRAIN, _nb  # noqa: E402
from nbrefactor.server import handlers  # noqa: E402
from nbrefactor.server.worker import FORK_SERVER  # noqa: E402

LIMIT = 1024 * 1024
PROMPT = 10.0  # seconds: a reply that does not wait for the body (or for a slow job) comes well within this


@pytest.fixture
def settings():
    """The tornado settings of the server; a test overrides them with parametrize("settings", ...)."""
    return {}


@pytest.fixture
def jp_server_config(settings):
    tornado_settings = {
        handlers.MAX_REQUEST_SETTING: LIMIT,
        handlers.WORKER_SECONDS_SETTING: 60,
        handlers.REQUESTS_PER_USER_SETTING: 2,
    }
    tornado_settings.update(settings)
    return Config({"ServerApp": {"jpserver_extensions": {"nbrefactor.server": True}, "tornado_settings": tornado_settings}})


@pytest.fixture
def run(jp_asyncio_loop):
    return jp_asyncio_loop.run_until_complete


@pytest.fixture
def port(http_server, jp_http_port):
    """The port of the running test server (http_server is what accepts on it)."""
    return jp_http_port


@pytest.fixture
def url(jp_base_url):
    return lambda endpoint: f"{jp_base_url}nbrefactor/{endpoint}"


@pytest.fixture
def token(jp_auth_header):
    return jp_auth_header["Authorization"]


def notebook(*sources: str) -> dict:
    return json.loads(_nb(*sources))


def small() -> dict:
    return notebook("import torch\n" + FABRIC + "fabric.launch()\n", "x = 1\nprint(x)\n", TRAIN)


def big(cells: int = 3000) -> dict:
    """Seconds to fix (a real notebook, not a stub): the slow request of these tests."""
    return notebook("import torch\n" + FABRIC + "fabric.launch()\n", *(f"x{i} = {i}\nprint(x{i})\n" for i in range(cells)), TRAIN)


def body_of(nb: dict) -> bytes:
    return json.dumps({"notebook": nb}).encode()


# --- a raw HTTP/1.1 client ------------------------------------------------------------------------


class Raw:
    """One connection to the test server, bytes under the test's control. What the server sends is
    collected as it arrives (a server that stops reading a body closes with a reset, and what it
    sent before must still count, as it does for a browser)."""

    def __init__(self, port: int):
        self.port = port
        self.received = bytearray()
        self.arrived = asyncio.Event()

    async def open(self) -> Raw:
        loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        await loop.sock_connect(self.sock, ("127.0.0.1", self.port))
        self.receiving = asyncio.ensure_future(self._receive())
        return self

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                piece = await loop.sock_recv(self.sock, 65536)
                if not piece:
                    return
                self.received += piece
                self.arrived.set()
        except OSError:  # reset by the server: the end, like a close
            return
        finally:
            self.arrived.set()

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def head(self, path: str, headers: dict) -> None:
        lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", *(f"{k}: {v}" for k, v in headers.items() if v is not None)]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    def reply(self) -> tuple[int, dict] | None:
        """(status, JSON body) of the reply, once it is all there."""
        end = self.received.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = self.received[:end].decode("latin-1").split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        data = bytes(self.received[end + 4 : end + 4 + int(fields.get("content-length", 0))])
        if len(data) < int(fields.get("content-length", 0)):
            return None
        return int(lines[0].split()[1]), json.loads(data) if data else {}

    async def response(self, timeout: float = PROMPT) -> tuple[int, dict]:
        deadline = time.monotonic() + timeout
        while (got := self.reply()) is None:
            if self.receiving.done():
                raise AssertionError(f"the connection ended without a whole reply: {bytes(self.received[:200])!r}")
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), max(0.0, deadline - time.monotonic()))
        return got

    async def closed_by_server(self, timeout: float = PROMPT) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self.receiving), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self.sock.close()
        self.receiving.cancel()


async def post_raw(port: int, path: str, token: str, body: bytes, cookie: str | None = None) -> Raw:
    raw = await Raw(port).open()
    await raw.head(path, {"Authorization": token, "Cookie": cookie, "Content-Type": "application/json", "Content-Length": len(body)})
    await raw.send(body)
    return raw


async def new_worker(before: set[int], timeout: float = 30.0) -> int:
    """The pid of a worker that was not running before (waits for it to start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = set(FORK_SERVER.running()) - before
        if new:
            return new.pop()
        await asyncio.sleep(0.01)
    raise AssertionError("no worker process started")


def alive(pid: int) -> bool:
    """Running (a zombie counts as gone: its memory is freed)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def gone_within(pid: int, seconds: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if not alive(pid):
            return time.monotonic() - start
        await asyncio.sleep(0.01)
    return None


async def no_workers_within(seconds: float = 5.0) -> bool:
    """All workers have exited (one exits just after its reply, so it may take a moment)."""
    deadline = time.monotonic() + seconds
    while FORK_SERVER.running():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message and "Traceback" not in message


# --- deep input: 400, one line, like the CLI --------------------------------------------------------

DEEP = {
    "attribute_chain_20000": "x = a" + ".b" * 20000 + "\n",
    "binary_operation_100000": "x = " + " + ".join(["1"] * 100000) + "\n",
}


@pytest.mark.parametrize("endpoint", ["check", "fix"])
@pytest.mark.parametrize("case", list(DEEP))
def test_deep_code_is_400_one_line(jp_fetch, run, endpoint, case):
    nb = notebook("import torch\n" + FABRIC + "fabric.launch()\n", DEEP[case], TRAIN)
    r = run(jp_fetch("nbrefactor", endpoint, method="POST", body=body_of(nb), raise_error=False))
    assert r.code == 400, r.body[:300]
    message = json.loads(r.body)["message"]
    # nbrefactor's reader refuses it (OverLimit: a line too long, nesting too deep), or the work
    # reaches Python's recursion limit: either way the message the CLI would print, on one line
    assert one_line(message) and any(words in message for words in ("nested too deeply", "too large", "too complex"))
    assert run(no_workers_within())  # the worker is done, and the server still answers:
    assert run(jp_fetch("nbrefactor", "check", method="POST", body=body_of(small()))).code == 200


# --- the size limit is enforced while the body streams in -----------------------------------------


def test_declared_length_over_limit_is_413_before_the_body(port, run, url, token):
    async def go():
        raw = await Raw(port).open()
        start = time.monotonic()
        await raw.head(url("fix"), {"Authorization": token, "Content-Type": "application/json", "Content-Length": 10**12})
        await raw.send(b'{"notebook": {"cells": [')  # a few bytes of the terabyte announced
        status, data = await raw.response()
        took = time.monotonic() - start
        closed = await raw.closed_by_server()  # and the rest is not waited for
        await raw.close()
        return status, data, took, closed

    status, data, took, closed = run(go())
    assert status == 413 and took < PROMPT and closed
    assert one_line(data["message"]) and "too large" in data["message"] and "at most 1.0 MiB" in data["message"]
    assert handlers.MAX_REQUEST_SETTING in data["message"]


@pytest.mark.parametrize("authorization", [None, "token not-the-token"])
def test_unauthenticated_huge_body_is_403_before_the_body(port, jp_web_app, run, url, authorization):
    async def go():
        raw = await Raw(port).open()
        start = time.monotonic()
        await raw.head(url("check"), {"Authorization": authorization, "Content-Length": 10**12})
        await raw.send(b"x" * 1000)
        status, _ = await raw.response()
        took = time.monotonic() - start
        closed = await raw.closed_by_server()
        await raw.close()
        return status, took, closed

    status, took, closed = run(go())
    assert status == 403 and took < PROMPT and closed
    assert not jp_web_app.settings.get("nbrefactor_in_flight")  # it never counted as this user's work


def test_chunked_body_over_limit_is_413(port, run, url, token):
    async def go():
        raw = await Raw(port).open()
        await raw.head(url("check"), {"Authorization": token, "Transfer-Encoding": "chunked"})
        piece = b"x" * 65536
        sent = 0
        try:
            # A body that never ends (no last chunk): only a server that counts while it reads can
            # answer. Socket buffers take a few MiB before the server has read anything.
            while sent < 64 * LIMIT and raw.reply() is None:
                await raw.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
        except ConnectionError:
            pass
        status, data = await raw.response()
        await raw.close()
        return status, data

    status, data = run(go())
    assert status == 413
    assert one_line(data["message"]) and "more than 1.0 MiB sent" in data["message"]


def test_chunked_body_under_limit_is_served(port, run, url, token):
    """A body without Content-Length, in small chunks, is put together and checked."""

    async def go():
        raw = await Raw(port).open()
        await raw.head(url("check"), {"Authorization": token, "Transfer-Encoding": "chunked"})
        body = body_of(notebook("import lightning as L\ntrainer = L.Trainer(devices=2, strategy='ddp')\n"))
        for i in range(0, len(body), 100):
            piece = body[i : i + 100]
            await raw.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        await raw.send(b"0\r\n\r\n")
        reply = await raw.response(timeout=60)
        await raw.close()
        return reply

    status, data = run(go())
    assert status == 200, data
    assert data["diagnostics"] and data["summary"].endswith(")")


# --- worker processes: limits, cancellation, no waiting behind a slow request -----------------------


def test_small_request_is_not_held_up_by_a_slow_one(jp_fetch, port, run, url, token):
    async def go():
        slow = await post_raw(port, url("fix"), token, body_of(big()))
        pid = await new_worker(set())
        start = time.monotonic()
        r = await jp_fetch("nbrefactor", "fix", method="POST", body=body_of(small()), request_timeout=120)
        took = time.monotonic() - start
        slow_still_running = alive(pid)  # its worker exits as soon as it has replied
        await slow.close()
        gone = await gone_within(pid, 5)
        return r, took, slow_still_running, gone

    r, took, slow_still_running, gone = run(go())
    assert r.code == 200 and json.loads(r.body)["changed"] is True
    assert slow_still_running, "the small fix finished only after the slow one"
    assert took < 60
    assert gone is not None


def test_abandoned_request_worker_is_killed(jp_fetch, jp_web_app, port, run, url, token):
    async def go():
        slow = await post_raw(port, url("fix"), token, body_of(big()))
        pid = await new_worker(set())
        assert jp_web_app.settings["nbrefactor_in_flight"]  # holds a slot of this user
        await slow.close()  # the user closed the tab
        return pid, await gone_within(pid, 1.0)

    pid, gone = run(go())
    assert gone is not None, f"worker {pid} still running 1 s after its client went away"
    assert run(no_workers_within()) and not jp_web_app.settings.get("nbrefactor_in_flight")


def test_more_than_two_requests_of_a_user_is_429(jp_fetch, jp_web_app, port, run, url, token):
    async def go():
        first = await post_raw(port, url("fix"), token, body_of(big()))
        one = await new_worker(set())
        second = await post_raw(port, url("fix"), token, body_of(big()))
        two = await new_worker({one})
        start = time.monotonic()
        third = await jp_fetch("nbrefactor", "check", method="POST", body=body_of(small()), raise_error=False)
        took = time.monotonic() - start
        for raw in (first, second):
            await raw.close()
        gone = [await gone_within(pid, 5) for pid in (one, two)]
        after = await jp_fetch("nbrefactor", "check", method="POST", body=body_of(small()), raise_error=False)
        return third, took, gone, after

    third, took, gone, after = run(go())
    assert third.code == 429 and took < PROMPT
    message = json.loads(third.body)["message"]
    assert one_line(message) and "2 request(s)" in message and handlers.REQUESTS_PER_USER_SETTING in message
    assert None not in gone
    assert after.code == 200  # the slots came back when the two went away
    assert not jp_web_app.settings.get("nbrefactor_in_flight")


def test_the_bound_is_per_user(jp_fetch, jp_web_app, port, run, url, token):
    """Two users logged in (their login cookies): one at her bound gets 429, the other is served;
    so are requests with the token alone (an API client: one more principal, with its own bound)."""

    async def login_cookie() -> str:
        r = await jp_fetch("nbrefactor", "version")
        found = [c.split(";")[0] for c in r.headers.get_list("Set-Cookie") if c.startswith("username-")]
        assert found, r.headers
        return found[0]

    async def go():
        alice, bob = await login_cookie(), await login_cookie()
        assert alice != bob
        slow = [await post_raw(port, url("fix"), token, body_of(big()), cookie=alice) for _ in range(2)]
        pids = set()
        for _ in slow:
            pids.add(await new_worker(pids))
        third = await post_raw(port, url("check"), token, body_of(small()), cookie=alice)
        alice_third = await third.response()
        bob_first = await (await post_raw(port, url("check"), token, body_of(small()), cookie=bob)).response(timeout=60)
        api_client = await jp_fetch("nbrefactor", "check", method="POST", body=body_of(small()), raise_error=False)
        for raw in slow:
            await raw.close()
        for pid in pids:
            await gone_within(pid, 5)
        return alice_third, bob_first, api_client

    (a_status, a_data), (b_status, b_data), api_client = run(go())
    assert a_status == 429 and "try again" in a_data["message"]
    assert b_status == 200 and b_data["summary"], b_data
    assert api_client.code == 200
    assert run(no_workers_within()) and not jp_web_app.settings.get("nbrefactor_in_flight")


@pytest.mark.parametrize("settings", [{handlers.WORKER_SECONDS_SETTING: 1}])
def test_time_limit_kills_the_worker_504(jp_fetch, run, settings):
    async def go():
        start = time.monotonic()
        task = asyncio.ensure_future(jp_fetch("nbrefactor", "fix", method="POST", body=body_of(big()), raise_error=False, request_timeout=120))
        pid = await new_worker(set())
        r = await task
        return r, time.monotonic() - start, pid

    r, took, pid = run(go())
    assert r.code == 504, r.body[:300]
    message = json.loads(r.body)["message"]
    assert one_line(message) and "too large or too complex" in message and "within 1 s" in message
    assert handlers.WORKER_SECONDS_SETTING in message
    assert took < 30 and not alive(pid)


@pytest.mark.parametrize("settings", [{handlers.WORKER_MEMORY_SETTING: 60 * 1024 * 1024}])
def test_memory_limit_is_413_and_the_server_stays_up(jp_fetch, run, settings):
    r = run(jp_fetch("nbrefactor", "fix", method="POST", body=body_of(big(1000)), raise_error=False, request_timeout=120))
    assert r.code == 413, r.body[:300]
    message = json.loads(r.body)["message"]
    assert one_line(message) and "too large or too complex" in message and "60.0 MiB" in message
    assert handlers.WORKER_MEMORY_SETTING in message
    assert run(jp_fetch("nbrefactor", "check", method="POST", body=body_of(small()))).code == 200
    assert run(no_workers_within())


def test_workers_are_not_children_of_the_server(jp_fetch, port, run, url, token):
    """The server process never forks itself (it has threads): workers are the fork server's."""

    async def go():
        slow = await post_raw(port, url("fix"), token, body_of(big()))
        pid = await new_worker(set())
        with open(f"/proc/{pid}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
        await slow.close()
        await gone_within(pid, 5)
        return parent

    parent = run(go())
    assert parent == FORK_SERVER._process.pid != os.getpid()


def _where(req):
    """Work that says which process ran it (imported by its name where it runs)."""
    return {"pid": os.getpid()}


def test_without_worker_processes_the_work_runs_in_a_thread(jp_fetch, run, monkeypatch):
    """Where worker processes cannot be made (no SOCK_SEQPACKET on macOS, no fork on Windows), the
    endpoints still work, in a thread of the server as before."""
    from nbrefactor.server import api

    monkeypatch.setattr(FORK_SERVER, "_supported", False)
    r = run(jp_fetch("nbrefactor", "fix", method="POST", body=body_of(small())))
    assert r.code == 200 and json.loads(r.body)["changed"] is True
    monkeypatch.setattr(api, "check", _where)
    r = run(jp_fetch("nbrefactor", "check", method="POST", body=body_of(small())))
    assert json.loads(r.body) == {"pid": os.getpid()}


# --- what a worker answers for each way the work can fail (worker.run, in this process) -------------


def _raise_overlimit(req):
    from nbrefactor.errors import OverLimit

    raise OverLimit(req.name, "skipped: took longer than 1 s\n(raise time-budget)", cell=3)


def _recurse(req):
    def down(n):
        return down(n + 1) + 1

    return down(0)


def _out_of_memory(req):
    raise MemoryError


@pytest.mark.parametrize(
    "work,header",
    [
        ("_raise_overlimit", {"status": 400, "message": "skipped: took longer than 1 s (raise time-budget)"}),
        ("_recurse", {"status": 400, "message": "skipped: the code is nested too deeply (deeper than 200 levels; raise max-nesting with the CLI's [tool.nbrefactor]; the server uses the default limits)"}),
        ("_out_of_memory", {"status": 413, "limit": "memory"}),
    ],
)
def test_worker_maps_failures_of_the_work(work, header):
    from nbrefactor.server import worker

    got, payload = worker.run(f"{__name__}:{work}", body_of(small()))
    assert (got, payload) == (header, b"")
