"""The jupyter_server extension behind JupyterLab's "Make multi-GPU safe" command.

Enabled on install by `jupyter-config/jupyter_server_config.d/nbrefactor.json` (installed into
`etc/jupyter/jupyter_server_config.d/`); no `jupyter server extension enable` needed. It adds:

    GET  {base_url}nbrefactor/version   what this server offers (the frontend pings it first)
    POST {base_url}nbrefactor/check     notebook JSON -> diagnostics
    POST {base_url}nbrefactor/fix       notebook JSON -> fixed notebook, changes, summary, diff

The notebook travels in the request: nothing is read from or written to disk, so the command works
on the notebook as it is open in Lab (unsaved edits included) and the user saves when they choose.
The work runs in a worker process per request, with memory and time limits, so that no notebook can
take the server down (`handlers` lists the limits and their settings, `worker` how it is done).
Needs the `lab` extra (`jupyter_server`); importing `nbrefactor` itself never imports this package.
"""

from __future__ import annotations


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "nbrefactor.server"}]


def _load_jupyter_server_extension(server_app) -> None:
    from nbrefactor.server.handlers import setup_handlers

    setup_handlers(server_app.web_app)
    server_app.log.info("nbrefactor: server extension loaded (/nbrefactor/check, /nbrefactor/fix)")

    def warm() -> None:  # start the workers' fork server now, so the first click does not wait for it
        from nbrefactor.server.worker import FORK_SERVER

        try:
            if FORK_SERVER.supported():
                FORK_SERVER.start()
        except OSError as err:
            server_app.log.warning("nbrefactor: cannot start its worker processes yet: %s", err)

    from tornado.ioloop import IOLoop

    IOLoop.current().add_callback(warm)


# The name jupyter_server used before 2.0; kept so an older server loads the extension too.
load_jupyter_server_extension = _load_jupyter_server_extension


def _jupyter_labextension_paths() -> list[dict]:
    """For `jupyter labextension develop --overwrite .` in a source checkout (links the built
    `labextension/dist/nbrefactor-lab`); wheels install the same files as shared data."""
    return [{"src": "../../labextension/dist/nbrefactor-lab", "dest": "nbrefactor-lab"}]
