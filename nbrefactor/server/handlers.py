"""HTTP handlers: authenticated JSON endpoints under `{base_url}nbrefactor/`.

* Authentication and XSRF are jupyter_server's: `APIHandler.prepare` answers 403 to a request
  without a valid token (or cookie plus XSRF token) before a byte of its body is read, and
  `@tornado.web.authenticated` stays on every verb.
* Bodies are streamed (`tornado.web.stream_request_body`) and bounded while they arrive: a
  Content-Length over `nbrefactor_max_request_bytes` gets 413 before the body is read, and a body
  without one (chunked) gets 413 as soon as it passes the limit. The Lab frontend sends notebooks
  without their outputs, so real notebooks stay far below it.
* The work runs in a worker process per request (`nbrefactor.server.worker`), with a memory limit
  (RLIMIT_AS) and a time limit (killed when it passes); a user has at most a few requests in flight;
  a request whose client goes away has its worker killed. (Where the platform cannot make worker
  processes, macOS and Windows, the work runs in a thread of the server, without those limits.)
  A "user" is who jupyter_server says (the login cookie's user); requests with the token and no
  login cookie (API clients) are one more user, since jupyter_server makes a new anonymous user
  for each of them.

Settings (`c.ServerApp.tornado_settings = {...}`):

    nbrefactor_max_request_bytes     16 MiB   the largest request body accepted
    nbrefactor_worker_memory_bytes    2 GiB   a worker's address-space limit (RLIMIT_AS)
    nbrefactor_worker_seconds            60   a worker's time limit (wall clock; then killed)
    nbrefactor_requests_per_user          2   check/fix requests one user may have in flight

Replies to errors are JSON `{"message": "<one line>"}`, with these statuses:

    400  the request or the notebook is one the CLI would reject too (bad JSON, not a notebook, a
         `NotebookError` such as `OverLimit` from reading, checking or fixing, nesting too deep)
    403  not authenticated (jupyter_server's reply)
    413  too large: the body is over the size limit, or the work needed more than the worker's
         memory (a MemoryError, or the worker died, e.g. killed for memory), or its reply would be
    429  the user already has `nbrefactor_requests_per_user` requests in flight; try again
    501  this nbrefactor has no fixer
    503  no worker process could be started (the machine is out of processes or memory)
    504  the work did not finish within the time limit (it is killed): the notebook is too complex
         for the limit, or the machine too busy; 504 rather than 400, since the same notebook may
         pass on a quieter machine or with a higher limit
    500  a bug in nbrefactor (logged with its traceback)
"""

from __future__ import annotations

import asyncio
import inspect
import json

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from nbrefactor.server import api
from nbrefactor.server.worker import FORK_SERVER

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_REQUEST_SETTING = "nbrefactor_max_request_bytes"
DEFAULT_WORKER_MEMORY_BYTES = 2 * 1024 * 1024 * 1024
WORKER_MEMORY_SETTING = "nbrefactor_worker_memory_bytes"
DEFAULT_WORKER_SECONDS = 60.0
WORKER_SECONDS_SETTING = "nbrefactor_worker_seconds"
DEFAULT_REQUESTS_PER_USER = 2
REQUESTS_PER_USER_SETTING = "nbrefactor_requests_per_user"
_IN_FLIGHT = "nbrefactor_in_flight"  # settings key: user -> requests in flight (this app's own)


class _NbrefactorHandler(APIHandler):
    def _reply_error(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": api._one_line(message)}))

    def _setting(self, name: str, default):
        value = self.settings.get(name)
        return type(default)(value) if value else default

    def _max_bytes(self) -> int:
        return self._setting(MAX_REQUEST_SETTING, DEFAULT_MAX_REQUEST_BYTES)


@tornado.web.stream_request_body
class _WorkHandler(_NbrefactorHandler):
    """POST a request JSON; the work runs in a worker process (see the module docstring)."""

    _slot: str | None = None  # the user whose in-flight count this request holds
    _job = None
    _gone = False  # the client closed the connection
    _chunks: list
    _received = 0

    async def prepare(self) -> None:
        # Tornado reads the body only after prepare(); its own size check would answer a bare 400
        # (after our reply, on the same connection), so it is left to the checks below.
        set_max_body_size = getattr(self.request.connection, "set_max_body_size", None)
        if set_max_body_size is not None:
            set_max_body_size(1 << 62)
        await super().prepare()  # identity, XSRF, origin: 403/404 before the body is read
        if self._finished:
            return
        if not self.current_user:  # also when allow_unauthenticated_access is set
            raise tornado.web.HTTPError(403)
        self._chunks = []
        limit = self._max_bytes()
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            self._too_large(f"{_size(int(declared))} sent", limit)
            return
        user = await self._user_key()
        in_flight = self.settings.setdefault(_IN_FLIGHT, {})
        most = self._setting(REQUESTS_PER_USER_SETTING, DEFAULT_REQUESTS_PER_USER)
        if in_flight.get(user, 0) >= most:
            self._reply_error(
                429,
                f"nbrefactor is already working on {most} request(s) of yours: try again when one is done "
                f"(c.ServerApp.tornado_settings['{REQUESTS_PER_USER_SETTING}'])",
            )
            return
        in_flight[user] = in_flight.get(user, 0) + 1
        self._slot = user

    async def _user_key(self) -> str:
        """Whose requests these are, for the per-user bound. A request with the token but without a
        login cookie (an API client) gets a new made-up user from jupyter_server each time; all
        such requests are one principal, the token's holder, and share one bound."""
        name = getattr(self.current_user, "username", None) or str(self.current_user)
        try:
            cookie_user = self.identity_provider.get_user_cookie(self)
            if inspect.isawaitable(cookie_user):
                cookie_user = await cookie_user
        except Exception:
            cookie_user = None
        if cookie_user is not None and getattr(cookie_user, "username", None) == name:
            return f"user {name}"
        if self.token_authenticated or not getattr(self.identity_provider, "auth_enabled", True):
            return "token"
        return f"user {name}"

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._received += len(chunk)
        limit = self._max_bytes()
        if self._received > limit:
            self._chunks = []
            self._too_large(f"more than {_size(limit)} sent", limit)
            return
        self._chunks.append(chunk)

    def _too_large(self, sent: str, limit: int) -> None:
        self._reply_error(
            413,
            f"the notebook is too large for nbrefactor: {sent}, at most {_size(limit)} accepted "
            f"(clear outputs first, or raise c.ServerApp.tornado_settings['{MAX_REQUEST_SETTING}'])",
        )

    def _release(self) -> None:
        if self._slot is not None:
            in_flight = self.settings.get(_IN_FLIGHT, {})
            left = in_flight.get(self._slot, 1) - 1
            if left > 0:
                in_flight[self._slot] = left
            else:
                in_flight.pop(self._slot, None)
            self._slot = None

    def on_finish(self) -> None:
        self._release()

    def on_connection_close(self) -> None:
        self._gone = True
        if self._job is not None:
            self._job.cancel()  # kills the worker: nobody is waiting for its reply
        self._release()
        super().on_connection_close()

    async def _serve(self, work) -> None:
        if self._finished or self._gone:
            return
        body = b"".join(self._chunks)
        self._chunks = []
        seconds = self._setting(WORKER_SECONDS_SETTING, DEFAULT_WORKER_SECONDS)
        memory = self._setting(WORKER_MEMORY_SETTING, DEFAULT_WORKER_MEMORY_BYTES)
        try:
            job, outcome = FORK_SERVER.submit(
                f"{work.__module__}:{work.__qualname__}",
                body,
                memory=memory,
                seconds=seconds,
                max_reply=max(64 * 1024 * 1024, 8 * self._max_bytes()),
            )
        except OSError as err:
            self.log.error("nbrefactor: cannot start a worker: %s", err)
            self._reply_error(503, f"nbrefactor cannot start a worker process now ({err}): try again")
            return
        del body
        self._job = job
        try:
            result = await outcome
        except asyncio.CancelledError:
            job.cancel()
            raise
        finally:
            self._job = None
        if result.cancelled or self._gone:
            return
        if result.status == 200:
            self.set_header("Content-Type", "application/json")
            self.finish(result.payload)
            return
        if result.status == 500 and result.traceback:
            self.log.error("nbrefactor: %s failed in its worker:\n%s", self.request.path, result.traceback.rstrip())
        self._reply_error(result.status, result.message or self._limit_message(result, seconds, memory))

    def _limit_message(self, result, seconds: float, memory: int) -> str:
        if result.limit == "depth":
            return "the notebook is too complex for nbrefactor: its code is nested too deeply"
        if result.limit == "time":
            return (
                f"the notebook is too large or too complex for nbrefactor (no result within {seconds:g} s; "
                f"c.ServerApp.tornado_settings['{WORKER_SECONDS_SETTING}'])"
            )
        if result.limit == "reply":
            return "the notebook is too large for nbrefactor (its reply would be too large)"
        why = result.detail or "it needed more memory than it may use"
        return (
            f"the notebook is too large or too complex for nbrefactor ({why}; a worker may use "
            f"{_size(memory)}: c.ServerApp.tornado_settings['{WORKER_MEMORY_SETTING}'])"
        )


class VersionHandler(_NbrefactorHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(api.version_info()))


class CheckHandler(_WorkHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        await self._serve(api.check)


class FixHandler(_WorkHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        await self._serve(api.fix)




def _size(n: int) -> str:
    if n >= 1024 * 1024 * 1024:
        return f"{n / (1024 * 1024 * 1024):.1f} GiB"
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} bytes"


def setup_handlers(web_app) -> None:
    base = web_app.settings["base_url"]
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "nbrefactor", "version"), VersionHandler),
            (url_path_join(base, "nbrefactor", "check"), CheckHandler),
            (url_path_join(base, "nbrefactor", "fix"), FixHandler),
        ],
    )
