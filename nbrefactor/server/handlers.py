"""HTTP handlers: authenticated JSON endpoints under `{base_url}nbrefactor/`.

* Authentication and XSRF are jupyter_server's: `APIHandler` + `@tornado.web.authenticated` answer
  403 to a request without a valid token (or cookie plus XSRF token).
* Requests are bounded: a body over `nbrefactor_max_request_bytes` (a tornado setting, 16 MiB by
  default: `c.ServerApp.tornado_settings = {"nbrefactor_max_request_bytes": ...}`) gets 413. The Lab
  frontend sends notebooks without their outputs, so real notebooks stay far below it.
* The libcst work runs in a small thread pool, off the event loop.
* Errors are JSON `{"message": "<one line>"}`: 400 for a bad body, 413 too large, 501 when this
  nbrefactor has no fixer, 500 (logged with its traceback) for a bug.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado.ioloop import IOLoop

from nbrefactor.server import api

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_REQUEST_SETTING = "nbrefactor_max_request_bytes"

# Two workers: one request never waits behind a slow one, and CPU-bound libcst work in more threads
# would only contend for the GIL.
_EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="nbrefactor")


class _NbrefactorHandler(APIHandler):
    def _reply_error(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message}))

    def _max_bytes(self) -> int:
        value = self.settings.get(MAX_REQUEST_SETTING, DEFAULT_MAX_REQUEST_BYTES)
        return int(value) if value else DEFAULT_MAX_REQUEST_BYTES

    async def _serve(self, work) -> None:
        body = self.request.body or b""
        limit = self._max_bytes()
        if len(body) > limit:
            self._reply_error(
                413,
                f"the notebook is too large for nbrefactor: {_size(len(body))} sent, at most {_size(limit)} "
                f"accepted (clear outputs first, or raise c.ServerApp.tornado_settings['{MAX_REQUEST_SETTING}'])",
            )
            return
        try:
            request = api.parse_request(body)
            reply = await IOLoop.current().run_in_executor(_EXECUTOR, work, request)
        except api.BadRequest as err:
            self._reply_error(400, str(err))
            return
        except NotImplementedError as err:
            self._reply_error(501, str(err))
            return
        except Exception as err:  # a bug in nbrefactor: say so in one line, log the traceback
            self.log.exception("nbrefactor: %s failed", self.request.path)
            self._reply_error(500, f"nbrefactor failed: {type(err).__name__}: {' '.join(str(err).split())}")
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(reply))


class VersionHandler(_NbrefactorHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(api.version_info()))


class CheckHandler(_NbrefactorHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        await self._serve(api.check)


class FixHandler(_NbrefactorHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        await self._serve(api.fix)


def _size(n: int) -> str:
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
