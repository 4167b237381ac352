"""The JupyterLab server extension (`nbrefactor.server`) through a real jupyter_server.

Uses pytest-jupyter's `jp_fetch` against a server started per test with the extension enabled.
Skipped when the `lab` extra (jupyter_server) or pytest-jupyter is not installed.

pytest-jupyter's fixtures are imported into this module rather than registered as a global
plugin, so its autouse fixtures (event loop, server clean-up) run for these tests only.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

pytest.importorskip("jupyter_server", reason="the lab extra (jupyter_server) is not installed")
pytest.importorskip("pytest_jupyter.jupyter_server", reason="pytest-jupyter[server] is not installed")

from pytest_jupyter.jupyter_server import *  # noqa: E402,F403  (fixtures: jp_fetch, jp_serverapp, ...)
from traitlets.config import Config  # noqa: E402

import nbrefactor  # noqa: E402
from nbrefactor.server import api, handlers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FABRIC_BAD = ROOT / "examples" / "fabric_bad.ipynb"
LIMIT = 256 * 1024


@pytest.fixture
def jp_server_config(request):
    extensions = {"nbrefactor.server": True}
    if "with_jupytext" in request.fixturenames:
        extensions["jupyterlab_jupytext"] = True  # what jupytext's own config file enables on install
    return Config(
        {
            "ServerApp": {
                "jpserver_extensions": extensions,
                "tornado_settings": {handlers.MAX_REQUEST_SETTING: LIMIT},
            }
        }
    )


@pytest.fixture
def with_jupytext():
    """Requesting this fixture starts the server with jupytext's server extension as well."""
    return True


@pytest.fixture
def fetch(jp_fetch, jp_asyncio_loop):
    """jp_fetch, run to completion; non-2xx replies come back instead of raising."""

    def run(*parts, **kwargs):
        kwargs.setdefault("raise_error", False)
        return jp_asyncio_loop.run_until_complete(jp_fetch(*parts, **kwargs))

    return run


def post(fetch, endpoint, payload, **kwargs):
    body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    return fetch("nbrefactor", endpoint, method="POST", body=body, allow_nonstandard_methods=True, **kwargs)


def reply(response) -> dict:
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


def fabric_bad() -> dict:
    """The example as JupyterLab sends it: sources as strings, not lists of lines."""
    nb = json.loads(FABRIC_BAD.read_text())
    for cell in nb["cells"]:
        if isinstance(cell["source"], list):
            cell["source"] = "".join(cell["source"])
    return nb


def with_output(nb: dict, cell_id: str, text: str) -> dict:
    for cell in nb["cells"]:
        if cell.get("id") == cell_id:
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": text}]
            cell["execution_count"] = 7
    return nb


def clean_notebook() -> dict:
    return {
        "cells": [
            {"cell_type": "code", "id": "aa", "metadata": {}, "execution_count": None, "outputs": [], "source": "import lightning as L"},
            {"cell_type": "code", "id": "bb", "metadata": {}, "execution_count": None, "outputs": [], "source": "x = 1\nprint(x)"},
        ],
        "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


# --- version, registration, auto-enable --------------------------------------------------------


def test_version(fetch):
    r = fetch("nbrefactor", "version")
    assert r.code == 200
    data = reply(r)
    assert data["name"] == "nbrefactor"
    assert data["version"] == nbrefactor.__version__
    assert data["api"] == api.API_VERSION
    assert data["fix"] == api.fixer_available()


def test_extension_points_and_autoenable_config():
    from nbrefactor import server

    assert server._jupyter_server_extension_points() == [{"module": "nbrefactor.server"}]
    config = json.loads((ROOT / "jupyter-config" / "jupyter_server_config.d" / "nbrefactor.json").read_text())
    assert config == {"ServerApp": {"jpserver_extensions": {"nbrefactor.server": True}}}


def test_every_handler_verb_is_authenticated():
    """Like the extension template's check_auth: each verb wrapped by tornado.web.authenticated."""
    for handler in (handlers.VersionHandler, handlers.CheckHandler, handlers.FixHandler):
        verbs = [m for m in ("get", "post", "put", "delete", "patch") if m in vars(handler)]
        assert verbs, handler
        for verb in verbs:
            assert hasattr(getattr(handler, verb), "__wrapped__"), f"{handler.__name__}.{verb} is not @authenticated"


# --- auth -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint,method", [("version", "GET"), ("check", "POST"), ("fix", "POST")])
@pytest.mark.parametrize("authorization", ["", "token not-the-token"])
def test_no_or_wrong_token_is_403(fetch, endpoint, method, authorization):
    body = json.dumps({"notebook": fabric_bad()}) if method == "POST" else None
    r = fetch("nbrefactor", endpoint, method=method, body=body, headers={"Authorization": authorization})
    assert r.code == 403


def test_cookie_without_xsrf_is_403(fetch, jp_serverapp):
    """A browser-style request (no token header, a cookie but no XSRF token) is refused."""
    r = post(fetch, "check", {"notebook": fabric_bad()}, headers={"Authorization": "", "Cookie": "_xsrf=abc"})
    assert r.code == 403


# --- check ----------------------------------------------------------------------------------------


def test_check_fabric_bad(fetch):
    r = post(fetch, "check", {"notebook": fabric_bad(), "path": "work/fabric_bad.ipynb"})
    assert r.code == 200
    data = reply(r)
    assert [(d["code"], d["cell"], d["cell_id"], d["row"]) for d in data["diagnostics"]] == [
        ("NBR101", 3, "e5f6", 2),
        ("NBR201", 4, "a7b8", 2),
        ("NBR201", 4, "a7b8", 3),
    ]
    assert all(d["path"] == "fabric_bad.ipynb" for d in data["diagnostics"])
    assert data["summary"] == "3 findings in 2 cells (3 with a fix)"


def test_check_select_and_ignore(fetch):
    data = reply(post(fetch, "check", {"notebook": fabric_bad(), "options": {"ignore": ["NBR2"]}}))
    assert [d["code"] for d in data["diagnostics"]] == ["NBR101"]
    data = reply(post(fetch, "check", {"notebook": fabric_bad(), "options": {"select": "NBR201"}}))
    assert {d["code"] for d in data["diagnostics"]} == {"NBR201"}


def test_check_clean_notebook(fetch):
    data = reply(post(fetch, "check", {"notebook": clean_notebook()}))
    assert data["diagnostics"] == [] and data["summary"] == "no multi-GPU problems found"


def test_check_non_python_notebook_is_skipped(fetch):
    nb = clean_notebook()
    nb["metadata"]["kernelspec"] = {"name": "ir", "language": "R", "display_name": "R"}
    data = reply(post(fetch, "check", {"notebook": nb}))
    assert data["diagnostics"] == [] and "not Python" in data["skipped"]


def _where(req):
    """Work that says where it ran (imported by name in the worker process)."""
    import os

    return {"pid": os.getpid(), "parent": os.getppid(), "threads": threading.active_count(), "name": req.name}


def test_work_runs_in_a_worker_process(fetch, monkeypatch):
    """Not in the server process, nor in a fork of it (it has threads): in a process forked by the
    fork server, one thread."""
    import os

    from nbrefactor.server.worker import FORK_SERVER

    monkeypatch.setattr(api, "check", _where)
    r = post(fetch, "check", {"notebook": fabric_bad(), "path": "a/b.ipynb"})
    assert r.code == 200, r.body
    data = reply(r)
    assert data["name"] == "b.ipynb" and data["threads"] == 1
    assert data["pid"] != os.getpid() and data["parent"] == FORK_SERVER._process.pid


def test_path_is_only_a_name(fetch, jp_root_dir):
    """The path in the request is never opened or written: only its last part appears in messages."""
    before = sorted(p.name for p in Path(jp_root_dir).iterdir())
    data = reply(post(fetch, "check", {"notebook": fabric_bad(), "path": "../../etc/passwd"}))
    assert {d["path"] for d in data["diagnostics"]} == {"passwd"}
    data = reply(post(fetch, "check", {"notebook": fabric_bad(), "path": "does/not/exist.ipynb"}))
    assert len(data["diagnostics"]) == 3
    assert sorted(p.name for p in Path(jp_root_dir).iterdir()) == before


# --- fix ------------------------------------------------------------------------------------------

needs_fixer = pytest.mark.skipif(not api.fixer_available(), reason="nbrefactor.fixer is not there yet")


@needs_fixer
def test_fix_fabric_bad(fetch):
    nb = with_output(fabric_bad(), "c3d4", "imported\n")
    r = post(fetch, "fix", {"notebook": nb, "path": "fabric_bad.ipynb"})
    assert r.code == 200
    data = reply(r)
    assert data["changed"] is True
    assert data["summary"] and data["summary"] != "nothing to change"
    assert data["changes"] and {c["code"] for c in data["changes"]} >= {"NBR101", "NBR201"}
    cells = {c["id"]: c for c in data["cells"]}
    # the training function now builds the data and does the CUDA work itself
    assert cells["c9d0"]["source"].startswith("def train(fabric):\n")
    assert "    dataloader = torch.utils.data.DataLoader(dataset)" in cells["c9d0"]["source"]
    assert ".cuda()" not in cells["e5f6"]["source"]
    assert cells["c9d0"]["changed"] and not cells["c3d4"]["changed"]
    # the whole notebook comes back valid, with the untouched cell's outputs
    import nbformat

    fixed = nbformat.reads(json.dumps(data["notebook"]), as_version=4)
    nbformat.validate(fixed)
    untouched = next(c for c in fixed.cells if c.get("id") == "c3d4")
    assert untouched.outputs[0]["text"] == "imported\n" and untouched.execution_count == 7
    assert "+++ fabric_bad.ipynb:cell 5" in data["diff"] and "+def train" not in data["diff"]
    assert data["remaining"] == [] and data["refused"] == []
    # fixing the fixed notebook changes nothing
    again = reply(post(fetch, "fix", {"notebook": data["notebook"]}))
    assert again["changed"] is False and again["summary"] == "nothing to change" and again["diff"] == ""


@needs_fixer
def test_fix_clean_notebook_is_unchanged(fetch):
    nb = clean_notebook()
    data = reply(post(fetch, "fix", {"notebook": nb}))
    assert data["changed"] is False
    assert [c["source"] for c in data["cells"]] == [c["source"] for c in nb["cells"]]
    assert not any(c["changed"] for c in data["cells"])


def _no_fixer(req):
    raise NotImplementedError("this nbrefactor has no fixer (nbrefactor.fixer is missing)")


def _broken(req):
    raise RuntimeError("boom\nsecond line")


def test_fix_without_fixer_is_501(fetch, monkeypatch):
    monkeypatch.setattr(api, "fix", _no_fixer)  # the worker imports the work by its name
    r = post(fetch, "fix", {"notebook": fabric_bad()})
    assert r.code == 501 and "no fixer" in reply(r)["message"]


def test_internal_error_is_500_one_line(fetch, monkeypatch, jp_serverapp):
    import io
    import logging

    monkeypatch.setattr(api, "check", _broken)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    jp_serverapp.log.addHandler(handler)
    try:
        r = post(fetch, "check", {"notebook": fabric_bad()})
    finally:
        jp_serverapp.log.removeHandler(handler)
    assert r.code == 500
    assert reply(r)["message"] == "nbrefactor failed: RuntimeError: boom second line"
    log = stream.getvalue()  # the worker's traceback reaches the server's log
    assert "failed in its worker" in log and "Traceback" in log and 'raise RuntimeError("boom' in log


# --- bad bodies, size -----------------------------------------------------------------------------

BAD_BODIES = {
    "empty": (b"", "request body is empty"),
    "not JSON": (b"{nope", "request body is not JSON"),
    "not UTF-8": (b'{"notebook": "\xff"}', "not UTF-8"),
    "array": (b"[1, 2]", "must be a JSON object"),
    "no notebook": (b'{"path": "a.ipynb"}', 'no "notebook" field'),
    "notebook is a string": (b'{"notebook": "{}"}', '"notebook" must be a JSON object'),
    "notebook without cells": (b'{"notebook": {"metadata": {}}}', 'no "cells" list'),
    "unknown field": (b'{"notebook": {"cells": []}, "extra": 1}', "unknown field(s) in request: extra"),
    "unknown option": (b'{"notebook": {"cells": []}, "options": {"fast": true}}', "unknown option(s): fast"),
    "bad select": (b'{"notebook": {"cells": []}, "options": {"select": [1]}}', 'option "select"'),
    "bad unsafe_fixes": (b'{"notebook": {"cells": []}, "options": {"unsafe_fixes": "yes"}}', "unsafe_fixes"),
    "bad devices": (b'{"notebook": {"cells": []}, "options": {"devices": 0}}', "devices"),
    "bad path": (b'{"notebook": {"cells": []}, "path": 3}', '"path"'),
    "cell without type": (b'{"notebook": {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"source": "x"}]}}', "not a notebook"),
}


@pytest.mark.parametrize("endpoint", ["check", "fix"])
@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_body_is_400_one_line(fetch, endpoint, name):
    body, expected = BAD_BODIES[name]
    r = post(fetch, endpoint, body)
    assert r.code == 400, r.body
    message = reply(r)["message"]
    assert expected in message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("endpoint", ["check", "fix"])
def test_too_large_is_413(fetch, endpoint):
    nb = fabric_bad()
    nb["cells"][0]["source"] = "x" * (LIMIT + 10)
    r = post(fetch, endpoint, {"notebook": nb})
    assert r.code == 413
    message = reply(r)["message"]
    assert "too large" in message and "256.0 KiB" in message and handlers.MAX_REQUEST_SETTING in message


# --- jupytext pairs saved through the server -------------------------------------------------------


@pytest.mark.filterwarnings("ignore:A `_load_jupyter_server_extension` function was not found:DeprecationWarning")
def test_jupytext_contents_manager_saves_the_pair(with_jupytext, fetch, jp_root_dir, jp_serverapp):
    """Saving a paired notebook through the contents API (what Lab's save does) writes its .py too."""
    assert hasattr(jp_serverapp.contents_manager, "formats"), "jupytext's contents manager is not active"
    nb = fabric_bad()
    nb["metadata"]["jupytext"] = {"formats": "ipynb,py:percent"}
    r = fetch("api", "contents", "paired.ipynb", method="PUT", body=json.dumps({"type": "notebook", "format": "json", "content": nb}))
    assert r.code in (200, 201), r.body
    text = (Path(jp_root_dir) / "paired.py").read_text()
    assert "# %%\nimport torch\nfrom lightning.fabric import Fabric" in text
    nb["cells"][4]["source"] = "def train(fabric):\n    pass"
    r = fetch("api", "contents", "paired.ipynb", method="PUT", body=json.dumps({"type": "notebook", "format": "json", "content": nb}))
    assert r.code == 200
    assert "def train(fabric):\n    pass" in (Path(jp_root_dir) / "paired.py").read_text()
