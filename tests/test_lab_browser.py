"""JupyterLab's "Make multi-GPU safe" end to end: a real `jupyter lab`, Debian's Chromium, Playwright.

One JupyterLab server (127.0.0.1, a token, its own config/settings/workspace folders) serves a temp
folder with copies of examples/fabric_bad.ipynb; each test opens it in a fresh page. Screenshots go
to tests/artifacts/ (and docs/lab-screenshot.png when it is missing or NBREFACTOR_UPDATE_SCREENSHOTS=1).

Skipped, with the reason, when Chromium, Playwright, JupyterLab or the built labextension is absent.
Build the labextension first: `cd labextension && jlpm install && jlpm build` (see INTEGRATION.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fabric_bad.ipynb"
ARTIFACTS = ROOT / "tests" / "artifacts"
DOCS_SHOT = ROOT / "docs" / "lab-screenshot.png"
BUILT = ROOT / "labextension" / "dist"
EXT = "nbrefactor-lab"
TOKEN = "nbrefactor-browser-test"
FIX = "nbrefactor:make-multi-gpu-safe"
CHECK = "nbrefactor:check-multi-gpu-safety"


def _chromium() -> str | None:
    for candidate in (os.environ.get("NBREFACTOR_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def _labextension_paths() -> list[str] | None:
    """Extra labextension folders to pass to Lab ([] when installed), or None when not built."""
    if (BUILT / EXT / "package.json").is_file():
        return [str(BUILT)]
    from jupyter_core.paths import jupyter_path

    if any((Path(p) / EXT / "package.json").is_file() for p in jupyter_path("labextensions")):
        return []
    return None


CHROMIUM = _chromium()
if CHROMIUM is None:
    pytest.skip("Chromium is not installed (apt-get install -y chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright (the Python package) is not installed")
pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (the lab extra)")
pytest.importorskip("jupyter_server", reason="jupyter_server is not installed (the lab extra)")
EXTRA_PATHS = _labextension_paths()
if EXTRA_PATHS is None:
    pytest.skip(
        f"the labextension is not built ({BUILT / EXT} missing, and none installed): "
        "cd labextension && jlpm install && jlpm build",
        allow_module_level=True,
    )

from playwright.sync_api import TimeoutError as PlaywrightTimeoutError  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from nbrefactor.server.api import fixer_available  # noqa: E402
from nbrefactor.launcher.processes import free_port  # noqa: E402

needs_fixer = pytest.mark.skipif(not fixer_available(), reason="nbrefactor.fixer is not there yet")


def _notebook() -> dict:
    """fabric_bad.ipynb as Lab would save it, with an output on the cell the fix leaves alone."""
    nb = json.loads(EXAMPLE.read_text())
    for cell in nb["cells"]:
        if cell["id"] == "c3d4":
            cell["execution_count"] = 1
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["imported\n"]}]
    return nb


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("lab")
    root, config, settings = base / "root", base / "config", base / "settings"
    for folder in (root, config, settings / "@jupyterlab" / "apputils-extension"):
        folder.mkdir(parents=True)
    (root / "fabric_bad.ipynb").write_text(json.dumps(_notebook(), indent=1) + "\n")
    paired = _notebook()
    paired["metadata"]["jupytext"] = {"formats": "ipynb,py:percent"}
    (root / "paired.ipynb").write_text(json.dumps(paired, indent=1) + "\n")
    import jupytext

    jupytext.write(jupytext.reads(json.dumps(paired), fmt="ipynb"), root / "paired.py", fmt="py:percent")
    # No "get Jupyter news?" toast over the screenshots.
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    port = free_port()
    server_config = {
        "ServerApp": {
            "ip": "127.0.0.1",
            "port": port,
            "port_retries": 0,
            "open_browser": False,
            "allow_root": True,
            "token": TOKEN,
            "root_dir": str(root),
            # nbrefactor's installed config enables it too; stated here so a source checkout works
            "jpserver_extensions": {"nbrefactor.server": True},
        },
        "LabApp": {"expose_app_in_browser": True, "extra_labextensions_path": EXTRA_PATHS},
    }
    (config / "jupyter_server_config.json").write_text(json.dumps(server_config))
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    log = open(base / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{(base / 'lab.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/nbrefactor/version?token={TOKEN}", timeout=2) as r:
                version = json.loads(r.read())
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"jupyter lab did not answer in 90 s:\n{(base / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield {"url": url, "root": root, "version": version, "log": base / "lab.log"}
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def open_notebook(lab, browser):
    pages = []

    def open_(name: str, *, before_load=None):
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(30_000)
        pages.append(page)
        if before_load:
            before_load(page)
        page.goto(f"{lab['url']}/lab/tree/{name}?reset&token={TOKEN}")
        page.wait_for_function(
            """name => {
                const w = window.jupyterapp && jupyterapp.shell.currentWidget;
                return w && w.context && w.context.path === name && w.context.isReady
                    && w.content.widgets.length > 0 && w.sessionContext.isReady
                    && w.sessionContext.session?.kernel?.status === 'idle';
            }""",
            arg=name,
            timeout=60_000,
        )
        return page

    yield open_
    for page in pages:
        page.close()


CELLS_JS = """() => jupyterapp.shell.currentWidget.content.model.sharedModel.cells.map(c => ({
    id: c.id, type: c.cell_type, source: c.getSource(),
    outputs: c.cell_type === 'code' ? c.getOutputs().length : null,
    count: c.cell_type === 'code' ? c.execution_count : null
}))"""


def cells(page) -> list[dict]:
    return page.evaluate(CELLS_JS)


def open_palette(page, text: str):
    """Open the command palette with its shortcut and type `text`; returns the palette's items."""
    palette = page.locator("#command-palette")
    for _ in range(3):  # the modal palette closes if something takes the focus while it opens
        page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
        page.keyboard.press("Escape")
        page.keyboard.press("Control+Shift+C")
        expect(palette).to_be_visible()
        try:
            palette.locator("input").fill(text, timeout=3_000)
            break
        except PlaywrightTimeoutError:
            continue
    return palette.locator(".lm-CommandPalette-item")


def run_from_palette(page, label: str) -> None:
    item = open_palette(page, label).filter(has_text=label).first
    expect(item).to_be_visible()
    item.click()


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


def test_server_part_answers(lab):
    assert lab["version"]["name"] == "nbrefactor" and lab["version"]["api"] == 1


def test_jupytext_contents_manager_is_active(lab):
    assert "[Jupytext Server Extension]" in lab["log"].read_text()


def test_commands_in_palette_toolbar_and_context_menu(open_notebook):
    page = open_notebook("fabric_bad.ipynb")
    toolbar = page.locator(f'.jp-NotebookPanel-toolbar [data-command="{FIX}"]')
    expect(toolbar).to_have_count(1)
    page.locator(".jp-Notebook .jp-Cell").nth(1).click(button="right")
    menu = page.locator(".lm-Menu")
    expect(menu.get_by_text("Make multi-GPU safe", exact=True)).to_be_visible()
    expect(menu.get_by_text("Check multi-GPU safety", exact=True)).to_be_visible()
    page.keyboard.press("Escape")
    expect(menu).to_have_count(0)
    items = open_palette(page, "multi-GPU")
    expect(items.filter(has_text="Make multi-GPU safe")).to_have_count(1)
    expect(items.filter(has_text="Check multi-GPU safety")).to_have_count(1)


def test_check_shows_findings_in_panel_and_on_cells(open_notebook):
    page = open_notebook("fabric_bad.ipynb")
    run_from_palette(page, "Check multi-GPU safety")
    items = page.locator("#nbrefactor-diagnostics .jp-nbrefactor-item")
    expect(items).to_have_count(3)
    assert [items.nth(i).get_attribute("data-code") for i in range(3)] == ["NBR101", "NBR201", "NBR201"]
    flagged = page.locator(".jp-Cell.jp-nbrefactor-flagged")
    expect(flagged).to_have_count(2)
    assert flagged.nth(0).get_attribute("data-nbrefactor") == "NBR101"
    items.nth(1).click()  # reveals the cell of the finding
    assert page.evaluate("() => jupyterapp.shell.currentWidget.content.activeCellIndex") == 3
    shot(page, "lab-check-multi-gpu-safety.png")


@needs_fixer
def test_make_multi_gpu_safe_then_one_undo(open_notebook):
    page = open_notebook("fabric_bad.ipynb")
    before = cells(page)
    run_from_palette(page, "Make multi-GPU safe")
    toast = page.locator(".Toastify__toast", has_text="Made multi-GPU safe")
    expect(toast).to_be_visible()
    after = cells(page)
    assert [c["id"] for c in after] == ["a1b2", "c3d4", "e5f6", "c9d0", "e1f2"]  # a7b8 moved into train
    by_id = {c["id"]: c for c in after}
    train = by_id["c9d0"]["source"]
    assert train.startswith("def train(fabric):\n")
    assert "    x = torch.tensor(1).to(fabric.device)" in train  # on each process's own device
    assert "    dataloader = torch.utils.data.DataLoader(dataset)" in train
    assert ".cuda()" not in by_id["e5f6"]["source"]
    assert by_id["c3d4"] == next(c for c in before if c["id"] == "c3d4")  # untouched, output kept
    assert by_id["c3d4"]["outputs"] == 1
    assert page.evaluate("() => jupyterapp.shell.currentWidget.context.model.dirty") is True
    expect(toast).to_be_in_viewport(ratio=1)  # the toast has finished sliding in
    path = shot(page, "lab-make-multi-gpu-safe.png")
    if not DOCS_SHOT.exists() or os.environ.get("NBREFACTOR_UPDATE_SCREENSHOTS") == "1":
        DOCS_SHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS_SHOT)

    toast.get_by_role("button", name="Show diff").click()
    diff = page.locator(".jp-nbrefactor-diff")
    expect(diff).to_be_visible()
    expect(diff.locator(".jp-nbrefactor-diff-add", has_text="dataloader = torch.utils.data.DataLoader(dataset)")).to_have_count(1)
    shot(page, "lab-make-multi-gpu-safe-diff.png")

    # One "Undo Cell Operation" restores everything: cells, ids, order, outputs.
    page.evaluate(
        """async () => {
            const nb = jupyterapp.shell.widgets('main').find(w => w.context && w.context.path === 'fabric_bad.ipynb');
            jupyterapp.shell.activateById(nb.id);
            await jupyterapp.commands.execute('notebook:undo-cell-action');
        }"""
    )
    assert cells(page) == before


@needs_fixer
def test_refuses_when_the_notebook_changes_during_the_request(open_notebook):
    held = []
    page = open_notebook("fabric_bad.ipynb", before_load=lambda p: p.route(re.compile(r"/nbrefactor/fix\b"), lambda route: held.append(route)))
    page.evaluate(f"() => {{ window.fixing = jupyterapp.commands.execute('{FIX}'); }}")
    deadline = time.monotonic() + 20
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert held, "the fix request was not sent"
    page.evaluate("() => jupyterapp.shell.currentWidget.content.model.sharedModel.cells[1].setSource('import torch  # typed meanwhile')")
    edited = cells(page)
    held[0].continue_()
    expect(page.locator(".Toastify__toast", has_text="changed while nbrefactor was working")).to_be_visible()
    assert cells(page) == edited


def test_says_clearly_when_the_server_part_is_missing(open_notebook):
    def no_server(page):
        page.route("**/nbrefactor/**", lambda route: route.fulfill(status=404, body="Not Found"))

    page = open_notebook("fabric_bad.ipynb", before_load=no_server)
    before = cells(page)
    page.evaluate(f"() => jupyterapp.commands.execute('{FIX}')")
    expect(page.locator(".Toastify__toast", has_text="server extension is not running")).to_be_visible()
    assert cells(page) == before


@needs_fixer
def test_paired_notebook_saved_from_lab_updates_its_py(open_notebook, lab):
    page = open_notebook("paired.ipynb")
    page.locator(f'.jp-NotebookPanel-toolbar [data-command="{FIX}"]').click()
    expect(page.locator(".Toastify__toast", has_text="Made multi-GPU safe")).to_be_visible()
    page.evaluate("() => jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !jupyterapp.shell.currentWidget.context.model.dirty")
    text = (lab["root"] / "paired.py").read_text()
    assert "def train(fabric):\n    # Don't run CUDA-related code before `.launch()`\n    x = torch.tensor(1).to(fabric.device)" in text
    saved = json.loads((lab["root"] / "paired.ipynb").read_text())
    assert [c["id"] for c in saved["cells"]] == ["a1b2", "c3d4", "e5f6", "c9d0", "e1f2"]
    assert saved["cells"][1]["outputs"], "the untouched cell kept its output on disk"
