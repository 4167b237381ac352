"""`%load_ext nbrefactor` in a real kernel (ipykernel over jupyter_client, CPU, real Lightning).

Two kernels for the module, each shared by its tests, which run in file order:

- `plain`: a fresh kernel with nothing faked. Loading imports no torch; a clean notebook then
  trains on 2 forked ranks through the guard; `%nbrefactor check` reads the kernel's history.
- `fake`: CUDA faked on the CPU build by an IPython startup file (the one of test_launcher.py:
  `torch.cuda.init()` "initialises" CUDA), and `JPY_SESSION_NAME` naming a notebook file whose cell
  ids the cells are sent with, as JupyterLab sends them. After CUDA is initialised in a cell, the
  Trainer, Fabric and Accelerate launch points all stop before forking, naming the cell and line;
  no child is forked (`os.register_at_fork` counts) and the kernel still runs the next cell.

Only the GPU is faked. The guard's NBR102 (poisoned fork, CUDA not initialised) path is tested in
process with a throwaway fork, as test_launcher.py tests the fork probe.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_launcher import FAKE_CUDA, needs_kernel

TRAINER = "lightning.pytorch.strategies.launchers.multiprocessing"


@dataclass
class Reply:
    status: str
    stdout: str = ""
    stderr: str = ""
    error: dict | None = None
    payload: list = field(default_factory=list)
    execution_count: int | None = None

    @property
    def shown(self) -> str:
        """The error as the frontend shows it (its structured traceback, joined)."""
        return "\n".join(self.error["traceback"]) if self.error else ""


class Kernel:
    """A real ipykernel; `run` sends an execute_request with the cell id in its metadata (JupyterLab's
    `cellId`, which IPython 8+ passes to `pre_run_cell`), and collects what the cell printed."""

    def __init__(self, cwd: Path, env: dict):
        from jupyter_client.manager import start_new_kernel

        self.km, self.kc = start_new_kernel(kernel_name="python3", cwd=str(cwd), env=env, startup_timeout=90)

    def run(self, code: str, cell_id: str | None = None, timeout: float = 120) -> Reply:
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": False}
        msg = self.kc.session.msg("execute_request", content, metadata={"cellId": cell_id} if cell_id else {})
        self.kc.shell_channel.send(msg)
        msg_id = msg["header"]["msg_id"]
        out = {"stdout": "", "stderr": ""}
        error = None
        deadline = time.monotonic() + timeout
        while True:
            m = self.kc.get_iopub_msg(timeout=max(1, deadline - time.monotonic()))
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            kind, c = m["msg_type"], m["content"]
            if kind == "stream":
                out[c["name"]] += c["text"]
            elif kind == "error":
                error = c
            elif kind in ("execute_result", "display_data"):
                out["stdout"] += c["data"].get("text/plain", "") + "\n"
            elif kind == "status" and c["execution_state"] == "idle":
                break
        while True:
            try:
                reply = self.kc.get_shell_msg(timeout=max(1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(code) from None
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        c = reply["content"]
        return Reply(c["status"], out["stdout"], out["stderr"], error, c.get("payload", []), c.get("execution_count"))

    def value(self, expression: str):
        r = self.run(f"import json as _j; print(_j.dumps({expression}))")
        assert r.status == "ok", r.shown or r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def _env(tmp: Path, fake_cuda: bool, **extra) -> dict:
    ipython = tmp / "ipython"
    startup = ipython / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    if fake_cuda:
        (startup / "00-fake-cuda.py").write_text(FAKE_CUDA)
    env = {k: v for k, v in os.environ.items() if k not in ("JPY_SESSION_NAME",) and not k.startswith("PYTEST")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "IPYTHONDIR": str(ipython), "PYTHONWARNINGS": "ignore", **extra}


QUIET = "logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False"

TINY = '''class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        with open(f"rank-{self.global_rank}", "w") as f:
            f.write(str(os.getpid()))
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
        return torch.utils.data.DataLoader(data, batch_size=4)'''

FIT = f'trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_notebook", max_epochs=1, limit_train_batches=2, {QUIET})\ntrainer.fit(Tiny())'


# -- the plain kernel: loading, a clean notebook, history mode --------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plain")
    kernel = Kernel(tmp, _env(tmp, fake_cuda=False))
    kernel.tmp = tmp
    yield kernel
    kernel.close()


def _ready(plain) -> None:
    """The extension loaded and torch and Lightning imported, whichever tests ran before (`-k`)."""
    if not plain.value("'nbrefactor' in get_ipython().extension_manager.loaded"):
        assert plain.run("%load_ext nbrefactor").status == "ok"
    assert plain.run("import os, sys\nimport torch\nimport lightning as L").status == "ok"


def _cuda_cell_before_a_fit(plain) -> int:
    """The In [n] of a cell that moves a model to the GPU (only where there is one) before a fit ran."""
    find = "[n for n, s in enumerate(In) if s.startswith('if torch.cuda.is_available()')]"  # not this query's own cell
    if not plain.value(find):
        assert plain.run("if torch.cuda.is_available():\n    model = Tiny().cuda()").status == "ok"  # not run on CPU
        assert plain.run(TINY).status == "ok"
        assert plain.run(FIT).status == "ok"
    return plain.value(find)[0]


@needs_kernel
def test_loading_imports_no_torch_and_takes_milliseconds(plain):
    r = plain.run(
        "import sys, time, json\n"
        "_t = time.perf_counter()\n"
        "get_ipython().run_line_magic('load_ext', 'nbrefactor')\n"
        "_dt = time.perf_counter() - _t\n"
        "print(json.dumps({'seconds': _dt, 'torch': 'torch' in sys.modules, 'libcst': 'libcst' in sys.modules,"
        " 'lightning': 'lightning' in sys.modules}))"
    )
    assert r.status == "ok", r.shown
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\n%load_ext nbrefactor in a fresh kernel: {seen['seconds'] * 1000:.1f} ms")
    assert not seen["torch"] and not seen["libcst"] and not seen["lightning"]
    assert seen["seconds"] < 1.0  # measured ~5-60 ms; the bound only catches a heavy import sneaking in
    # the import hook patches torch and Lightning when the notebook imports them, not before
    r = plain.run("import os\nimport torch\nimport lightning as L")
    assert r.status == "ok", r.shown
    assert plain.value("hasattr(torch.cuda._lazy_init, '__wrapped__')")
    launch = plain.value(f"sys.modules['{TRAINER}']._MultiProcessingLauncher.launch.__code__.co_filename")
    assert launch.endswith(os.path.join("nbrefactor", "kernel", "guard.py"))


@needs_kernel
def test_a_clean_notebook_trains_on_two_ranks_through_the_guard(plain):
    _ready(plain)
    assert plain.run("if torch.cuda.is_available():\n    model = Tiny().cuda()").status == "ok"  # not run on CPU
    assert plain.run(TINY).status == "ok"
    r = plain.run(FIT)
    assert r.status == "ok", r.shown + r.stderr
    assert {p.name for p in plain.tmp.glob("rank-*")} == {"rank-0", "rank-1"}
    pids = {int((plain.tmp / f"rank-{i}").read_text()) for i in (0, 1)}
    assert len(pids) == 2 and plain.value("os.getpid()") not in pids  # forked children, not the kernel
    status = plain.run("%nbrefactor status").stdout
    assert "first CUDA initialisation: none seen" in status
    assert "launch 1 (trainer, In [" in status and "): allowed" in status


@needs_kernel
def test_a_clean_fabric_launch_goes_through_the_guard(plain):
    _ready(plain)
    r = plain.run(
        "from lightning.fabric import Fabric\n\ndef train(fabric):\n"
        '    open(f"fabric-rank-{fabric.global_rank}", "w").close()\n\n'
        'Fabric(accelerator="cpu", devices=2, strategy="ddp_notebook").launch(train)'
    )
    assert r.status == "ok", r.shown + r.stderr
    assert {p.name for p in plain.tmp.glob("fabric-rank-*")} == {"fabric-rank-0", "fabric-rank-1"}
    assert "(fabric, In [" in plain.run("%nbrefactor status").stdout


@needs_kernel
def test_check_in_history_mode_names_in_numbers(plain):
    """No notebook file known: the cells run so far are checked, placed as `In [n]`."""
    _ready(plain)
    cuda_cell = _cuda_cell_before_a_fit(plain)
    r = plain.run("%nbrefactor check")
    assert r.status == "ok", r.shown
    out = r.stdout
    assert "cells run in this kernel so far" in out and "does not know its notebook file" in out
    # `model = Tiny().cuda()` ran before the fit (not on CPU, but it is there): the static check finds it
    assert f"In [{cuda_cell}]:2:13: NBR101" in out, out
    assert "  help: fixable with `%nbrefactor fix --unsafe-fixes`" in out  # the magic's flag, not the CLI's
    r = plain.run("%nbrefactor fix")
    assert r.status == "ok" and "nothing was written" in r.stdout
    r = plain.run("%nbrefactor fix --unsafe-fixes")
    assert r.status == "ok" and f"+++ In [{cuda_cell}]" in r.stdout, r.stdout


@needs_kernel
def test_status_names_the_cell_that_loaded_the_extension(plain):
    """`loaded at In [n]` is the `%load_ext` cell itself (IPython 9 has counted the next cell already
    while one runs), and a second `%load_ext` keeps the first load."""
    _ready(plain)
    r = plain.run("%reload_ext nbrefactor")
    assert r.status == "ok", r.shown
    assert plain.run("%load_ext nbrefactor").status == "ok"
    status = plain.run("%nbrefactor status").stdout
    assert status.startswith(f"nbrefactor guard loaded at In [{r.execution_count}].\n"), status


# -- the fake-CUDA kernel: the guard at every launch point, file mode -------------------------------

# (cell id, source); markdown cells count in the notebook's cell numbers
CELLS = [
    ("intro", "md:# The guard"),
    ("load", "%load_ext nbrefactor"),
    ("imports", ("import os, json\nimport torch\nimport lightning as L\nfrom lightning.fabric import Fabric\n"
                 "forks = []\nos.register_at_fork(after_in_parent=lambda: forks.append(1))")),
    ("setup", "def setup():\n    torch.cuda.init()\n    return 1"),
    ("use", "x = 1\nready = setup()"),
    ("data", "dataset = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randn(16, 1))"),
    ("model", TINY.replace('f"rank-{self.global_rank}"', 'f"ran-trainer-{os.getpid()}"')),
    ("fit", FIT),
    ("alive", 'print("alive", len(forks))'),
    ("fabric", ('def train(fabric):\n    open(f"ran-fabric-{os.getpid()}", "w").close()\n    return len(dataset)\n\n'
                'fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp_notebook")\nfabric.launch(train)')),
    ("accelerate", ('from accelerate import notebook_launcher\n\ndef function():\n    open(f"ran-accelerate-{os.getpid()}", "w").close()\n\n'
                    "notebook_launcher(function, num_processes=2)")),
]


def _write_notebook(path: Path) -> bytes:
    import nbformat

    nb = nbformat.v4.new_notebook()
    for cell_id, source in CELLS:
        cell = nbformat.v4.new_markdown_cell(source[3:]) if source.startswith("md:") else nbformat.v4.new_code_cell(source)
        cell.id = cell_id
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    path.write_text(nbformat.writes(nb), encoding="utf-8")
    return path.read_bytes()


def _number(cell_id: str) -> int:
    return [c for c, _ in CELLS].index(cell_id) + 1


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fake")
    nb = tmp / "train.ipynb"
    data = _write_notebook(nb)
    kernel = Kernel(tmp, _env(tmp, fake_cuda=True, JPY_SESSION_NAME=str(nb)))
    kernel.tmp, kernel.nb, kernel.data = tmp, nb, data
    kernel.counts = {}
    for cell_id, source in CELLS[:7]:  # up to the launch points
        if source.startswith("md:"):
            continue
        r = kernel.run(source, cell_id)
        assert r.status == "ok", (cell_id, r.shown, r.stderr)
        kernel.counts[cell_id] = r.execution_count
    yield kernel
    kernel.close()


def _ran(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.glob("ran-*"))


@needs_kernel
def test_trainer_fit_stops_before_forking_naming_the_cell_and_line(fake):
    r = fake.run(CELLS[_number("fit") - 1][1], "fit")
    assert r.status == "error" and r.error["ename"] == "ForkGuardError", r.shown + r.stderr
    shown = r.shown
    print("\n" + shown)
    setup, use, fit = fake.counts["setup"], fake.counts["use"], r.execution_count
    # the first line says what was stopped, where, and the rule; then where CUDA was first initialised,
    # in both numberings (the kernel's In [n] and the notebook's cell N), and what to write instead
    assert shown.startswith(f"ForkGuardError: nbrefactor stopped `trainer.fit(Tiny())` (In [{fit}], cell {_number('fit')} of train.ipynb, line 2)")
    assert "before it forked 2 training processes: CUDA is already initialised in this kernel [NBR101]" in shown
    assert f"at In [{setup}], cell {_number('setup')} of train.ipynb, line 2: `torch.cuda.init()` in setup()" in shown
    assert f"called from In [{use}], cell {_number('use')} of train.ipynb, line 2: `ready = setup()`" in shown
    assert "LightningModule" in shown and "restart the kernel" in shown and "%nbrefactor fix" in shown
    assert "Traceback" not in shown and "lightning/pytorch" not in shown  # one message, not Lightning's stack
    # nothing was forked (not even the fork probe: CUDA is initialised, no need to ask a child)
    r = fake.run('print("alive", len(forks))', "alive")
    assert r.status == "ok" and r.stdout.split() == ["alive", "0"]
    assert _ran(fake.tmp) == []


@needs_kernel
def test_fabric_launch_and_notebook_launcher_stop_before_forking(fake):
    r = fake.run(CELLS[_number("fabric") - 1][1], "fabric")
    assert r.error and r.error["ename"] == "ForkGuardError", r.shown + r.stderr
    assert "`fabric.launch(train)`" in r.shown and f"cell {_number('fabric')} of train.ipynb, line 6)" in r.shown
    assert "[NBR101]" in r.shown and "the function you pass to `fabric.launch`" in r.shown
    r = fake.run(CELLS[_number("accelerate") - 1][1], "accelerate")
    assert r.error and r.error["ename"] == "ForkGuardError", r.shown + r.stderr
    assert "`notebook_launcher(function, num_processes=2)`" in r.shown and "[NBR101]" in r.shown
    assert "before it forked 2 training processes" in r.shown and "`notebook_launcher`" in r.shown
    assert "`torch.cuda.init()` in setup()" in r.shown
    r = fake.run('print("alive", len(forks))')
    assert r.stdout.split() == ["alive", "0"] and _ran(fake.tmp) == []
    status = fake.run("%nbrefactor status").stdout
    assert "torch was already imported when it loaded" in status  # the fake-CUDA startup file imported it
    assert f"first CUDA initialisation: In [{fake.counts['setup']}], cell {_number('setup')} of train.ipynb, line 2" in status
    assert status.count(": stopped") >= 2 and ": allowed" not in status


@needs_kernel
def test_check_and_fix_read_the_notebook_file_and_write_nothing(fake):
    r = fake.run("%nbrefactor check")
    assert r.status == "ok", r.shown
    assert f"checked {fake.nb} as last saved" in r.stdout
    assert f"train.ipynb:cell {_number('use')}:2:9: NBR101" in r.stdout, r.stdout
    r = fake.run("%nbrefactor fix --load 1")
    assert r.status == "ok", r.shown
    assert "--- train.ipynb:cell" in r.stdout and "+++ train.ipynb:cell" in r.stdout, r.stdout
    assert "nothing was written" in r.stdout and "The fixed cells" in r.stdout
    (payload,) = [p for p in r.payload if p.get("source") == "set_next_input"]
    assert payload["text"] and payload["text"] in r.stdout
    assert fake.nb.read_bytes() == fake.data  # the open notebook is never rewritten


# -- in process: the poisoned-fork path, and unloading ----------------------------------------------


def _fake_torch(poisoned: bool):
    parent = os.getpid()
    cuda = types.SimpleNamespace(is_initialized=lambda: False, _is_in_bad_fork=lambda: poisoned and os.getpid() != parent)
    return types.SimpleNamespace(cuda=cuda)


def _state(tmp_path):
    from nbrefactor.kernel import ext

    state = ext.KernelState(None)
    state.notebook_cache = {}
    return state


@pytest.mark.parametrize("lightning_imported, code", [(False, "NBR102"), (True, "NBR101")])
def test_a_poisoned_fork_without_cuda_initialised_is_found_by_a_throwaway_child(tmp_path, monkeypatch, lightning_imported, code):
    from nbrefactor.kernel import ext, guard

    state = _state(tmp_path)
    monkeypatch.setattr(ext, "STATE", state)
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(poisoned=True))
    state.cuda["probe"] = {"kind": "probe", "cell": 3, "line": 2, "function": "<module>", "code": "use_gpu = torch.cuda.is_available()", "lightning_imported": lightning_imported}
    with pytest.raises(guard.ForkGuardError) as raised:
        guard.check(state, "trainer", {"cell": 5, "line": 1, "code": "trainer.fit(model)"}, 2)
    text = str(raised.value)
    assert raised.value.code == code and f"[{code}]" in text
    assert "fork is poisoned" in text and "queried (the device count, which poisons fork) at In [3], line 2: `use_gpu = torch.cuda.is_available()`" in text
    if code == "NBR102":
        assert "import Lightning before the first `torch.cuda.is_available()`" in text
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(poisoned=False))
    guard.check(state, "trainer", {"cell": 6, "line": 1, "code": "trainer.fit(model)"}, 2)  # a clean fork passes
    assert [launch["stopped"] for launch in state.launches] == [True, False]


def test_cuda_initialised_before_the_extension_loaded_is_said_so(tmp_path, monkeypatch):
    from nbrefactor.kernel import ext, guard

    state = _state(tmp_path)
    state.loaded_at, state.before = 9, {"torch": True, "cuda_initialized": True}
    monkeypatch.setattr(ext, "STATE", state)
    torch = _fake_torch(poisoned=True)
    torch.cuda.is_initialized = lambda: True
    monkeypatch.setitem(sys.modules, "torch", torch)
    with pytest.raises(guard.ForkGuardError) as raised:
        guard.check(state, "fabric", {"cell": 12, "line": 3, "code": "fabric.launch(train)"}, 4)
    text = str(raised.value)
    assert text.startswith("nbrefactor stopped `fabric.launch(train)` (In [12], line 3) before it forked 4 training processes")
    assert "CUDA was initialised before `%load_ext nbrefactor` ran (In [9]; torch was already imported)" in text
    assert "the function you pass to `fabric.launch`" in text and "[NBR101]" in text


def test_notebook_launcher_imported_before_the_extension_is_guarded_where_accelerate_exports_it(tmp_path, monkeypatch):
    """`import accelerate` before `%load_ext`: the package's `notebook_launcher` (what `from accelerate
    import notebook_launcher` reads afterwards) is the guarded one; one process is never checked."""
    from nbrefactor.kernel import ext, guard

    calls = []

    def notebook_launcher(function, args=(), num_processes=None, mixed_precision="no"):
        calls.append(num_processes)

    launchers = types.ModuleType("accelerate.launchers")
    launchers.notebook_launcher = notebook_launcher
    package = types.ModuleType("accelerate")
    package.notebook_launcher = notebook_launcher
    monkeypatch.setitem(sys.modules, "accelerate", package)
    state = _state(tmp_path)
    monkeypatch.setattr(ext, "STATE", state)
    torch = _fake_torch(poisoned=False)
    torch.cuda.is_initialized = lambda: True
    monkeypatch.setitem(sys.modules, "torch", torch)
    table = guard.patches(state)
    guard.apply(state, table, "accelerate.launchers", launchers)
    assert package.notebook_launcher is launchers.notebook_launcher is not notebook_launcher
    package.notebook_launcher(print, num_processes=1)  # no fork: not checked
    with pytest.raises(guard.ForkGuardError, match=r"before it forked 2 training processes"):
        package.notebook_launcher(print, (), 2)
    assert calls == [1]  # the stopped launch never reached Accelerate
    for undo in reversed(state.undo):
        undo()
    assert package.notebook_launcher is notebook_launcher is launchers.notebook_launcher


def test_unload_takes_every_patch_out(monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    from nbrefactor.kernel import ext

    shell = InteractiveShell.instance()
    cuda = types.SimpleNamespace(_lazy_init=lambda: None, is_initialized=lambda: False)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setitem(sys.modules, "torch.cuda", cuda)
    original, hooks = cuda._lazy_init, list(sys.meta_path)
    try:
        shell.run_line_magic("load_ext", "nbrefactor")
        assert cuda._lazy_init is not original and "nbrefactor" in shell.magics_manager.magics["line"]
        assert "cache" in shell.compile.__dict__
    finally:
        shell.run_line_magic("unload_ext", "nbrefactor")
    assert ext.STATE is None and cuda._lazy_init is original and sys.meta_path == hooks
    assert "nbrefactor" not in shell.magics_manager.magics["line"] and "cache" not in shell.compile.__dict__
    assert shell.custom_exceptions == ()


def test_check_offers_the_magic_fix_only_when_a_finding_has_one():
    """`%nbrefactor check` in history mode, in process: a finding that needs a manual fix is not sent
    to `%nbrefactor fix` (which would say "Nothing to fix"); one with a fix is, by the magic's name."""
    from nbrefactor.config import Selection
    from nbrefactor.kernel import magics

    def checked(*cells: str) -> str:
        shell = types.SimpleNamespace(history_manager=types.SimpleNamespace(input_hist_raw=["", *cells]), user_ns={})
        return magics.check(magics.notebook_source(shell, None, history=True), Selection())

    fit = 'import lightning as L\ntrainer = L.Trainer(strategy="ddp_notebook", devices=2)\ntrainer.fit(model)'
    manual = checked("import torch", "def setup():\n    torch.cuda.init()", "setup()", fit)
    assert "In [3]:1:1: NBR101" in manual and "needs a manual fix" in manual, manual
    assert manual.endswith("None has an automatic fix: the help lines say where to read how to fix it."), manual
    fixable = checked("import torch", "if torch.cuda.is_available():\n    model = Tiny().cuda()", fit)
    assert "NBR102" in fixable and "  help: fixable with `%nbrefactor fix`\n" in fixable, fixable
    assert fixable.endswith("`%nbrefactor fix` shows the fix."), fixable


def _history_shell(*cells: str):
    return types.SimpleNamespace(history_manager=types.SimpleNamespace(input_hist_raw=["", *cells]), user_ns={})


def test_magics_read_the_projects_settings_and_never_show_a_traceback(tmp_path, monkeypatch, capsys):
    """`%nbrefactor check` and `fix` use the `[tool.nbrefactor]` of the notebook's project (in history
    mode: the kernel's working folder) as the CLI does; a bug of ours is one line, not a traceback."""
    from nbrefactor.kernel import magics

    shell = _history_shell("import torch", "if torch.cuda.is_available():\n    model = Tiny().cuda()",
                           'import lightning as L\ntrainer = L.Trainer(strategy="ddp_notebook", devices=2)\ntrainer.fit(model)')
    monkeypatch.chdir(tmp_path)
    magics.run(shell, None, "check --history")
    assert "NBR102" in capsys.readouterr().out
    (tmp_path / "pyproject.toml").write_text('[tool.nbrefactor]\nignore = ["NBR1"]\n')
    magics.run(shell, None, "check --history")
    out = capsys.readouterr().out
    assert "NBR1" not in out and "No multi-GPU problems found." in out, out
    magics.run(shell, None, "fix --history")
    assert "Nothing to fix." in capsys.readouterr().out
    (tmp_path / "pyproject.toml").write_text("[tool.nbrefactor]\nignore = 3\n")
    magics.run(shell, None, "check --history")
    out = capsys.readouterr().out
    assert out.startswith("%nbrefactor check: ") and "ignore must be a list of strings" in out and "Traceback" not in out, out

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    (tmp_path / "pyproject.toml").unlink()
    monkeypatch.setattr(magics, "check", broken)
    magics.run(shell, None, "check --history")
    out = capsys.readouterr().out
    assert out.strip() == "%nbrefactor check: internal error (KeyError: 'a bug'); please report it", out
