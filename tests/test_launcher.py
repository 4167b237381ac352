"""`nbrefactor run`: a real kernel, real Lightning on CPU with 2 forked processes, real signals.

The end-to-end tests run the command as a user does (`python -m nbrefactor.launcher`, the same click
command `nbrefactor run` registers) on notebooks written here, and read its `--report` JSON. Only
CUDA is faked, and only where a GPU would be needed: an IPython startup file (the kernel runs it
before anything else) that makes `torch.cuda.init()` "initialise" CUDA on this CPU build. The
tracer, the fork probe, the rule mapping and the process checks are also tested in-process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.conftest import ROOT

RUN_EXTRA = ("nbclient", "ipykernel", "jupyter_client", "torch", "lightning", "nbformat")
needs_kernel = pytest.mark.skipif(
    any(find_spec(m) is None for m in RUN_EXTRA), reason="needs the `run` extra (torch, lightning, nbclient, ipykernel)"
)

# -- notebooks ------------------------------------------------------------------------------------

IMPORTS = "import os, json, time\nimport torch\nfrom lightning.fabric import Fabric"

FABRIC_TRAIN = '''def train(fabric):
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    loader = fabric.setup_dataloaders(torch.utils.data.DataLoader(data, batch_size=8))
    batches = 0
    for x, y in loader:
        loss = torch.nn.functional.mse_loss(model(x), y)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        batches += 1
    return batches'''

TINY_MODULE = '''class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        with open(f"steps-{os.getpid()}", "a") as f:
            f.write(f"{batch_idx}\\n")
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
        return torch.utils.data.DataLoader(data, batch_size=8)'''

# train() reports that it is running (pid, port) and then never returns
HANG = '''def train(fabric):
    with open(f"ready-{fabric.global_rank}", "w") as f:
        json.dump({"pid": os.getpid(), "port": int(os.environ["MASTER_PORT"])}, f)
    time.sleep(600)

fabric = Fabric(accelerator="cpu", devices=2)
fabric.launch(train)'''

# Test-only CUDA: `torch.cuda.init()` "initialises" it, and a forked child then finds fork poisoned
FAKE_CUDA = '''import os as _os
import torch as _torch
_parent = _os.getpid()
_state = {"initialized": False}
def _fake_lazy_init():
    _state["initialized"] = True
_torch.cuda._lazy_init = _fake_lazy_init
_torch.cuda.is_initialized = lambda: _state["initialized"] and _os.getpid() == _parent
_torch.cuda._is_in_bad_fork = lambda: _state["initialized"] and _os.getpid() != _parent
'''


def notebook(path: Path, *cells: str) -> Path:
    """Write a notebook; a cell starting with `md:` is markdown (it still counts in cell numbers)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    path.write_text(nbformat.writes(nb), encoding="utf-8")
    return path


def launcher_env(tmp_path: Path, fake_cuda: bool = False) -> dict:
    ipython = tmp_path / "ipython"
    startup = ipython / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    if fake_cuda:
        (startup / "00-fake-cuda.py").write_text(FAKE_CUDA)
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "IPYTHONDIR": str(ipython)}


def nbrefactor_run(nb: Path, *args: str, fake_cuda: bool = False, timeout: float = 120):
    """`nbrefactor run NB --accelerator cpu --devices 2 ...` in a subprocess; (result, report dict)."""
    report = nb.with_suffix(".report.json")
    r = subprocess.run(
        [sys.executable, "-m", "nbrefactor.launcher", str(nb), "--accelerator", "cpu", "--devices", "2", "--report", str(report), *args],
        cwd=nb.parent,
        env=launcher_env(nb.parent, fake_cuda),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return r, (json.loads(report.read_text()) if report.exists() else None)


def running(pid: int) -> bool:
    """Alive, read from /proc: a zombie (exited, not yet reaped) holds no memory, GPU or port."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def listening(port: int) -> bool:
    from nbrefactor.launcher.processes import port_listening

    return port_listening(port)


# -- end to end: passing notebooks ----------------------------------------------------------------


@needs_kernel
def test_fabric_notebook_passes_with_two_ranks_proved_by_the_children(tmp_path):
    nb = notebook(tmp_path / "fabric.ipynb", "md:# Fabric", IMPORTS, FABRIC_TRAIN, "fabric = Fabric(accelerator='cpu', devices=1)\nbatches = fabric.launch(train)\nprint('batches', batches)")
    before = nb.read_bytes()
    executed = tmp_path / "executed.ipynb"
    r, report = nbrefactor_run(nb, "-o", str(executed))
    assert r.returncode == 0, r.stdout + r.stderr
    assert report["verdict"] == "pass" and report["ranks"] == 2
    (launch,) = report["launches"]
    assert (launch["kind"], launch["cell"], launch["line"], launch["processes"]) == ("fabric", 4, 2, 2)
    assert [r_["rank"] for r_ in launch["ranks"]] == [0, 1] and {r_["status"] for r_ in launch["ranks"]} == {"finished"}
    pids = {r_["pid"] for r_ in launch["ranks"]}
    assert len(pids) == 2 and report["cleanup"]["kernel_pid"] not in pids  # forked, not the kernel
    # the notebook asked for 1 device; the launcher made it 2, and smoke mode cut the loader to 2 batches
    assert report["overrides"][0]["changed"]["devices"] == [1, 2]
    assert [c["status"] for c in report["cells"]] == ["skipped", "ok", "ok", "ok"]
    assert all(c["seconds"] > 0 for c in report["cells"][1:])
    import nbformat

    assert "batches 2" in "".join(o.get("text", "") for o in nbformat.read(executed, 4).cells[3].outputs)
    assert nb.read_bytes() == before  # the notebook itself is never written
    assert "PASS" in r.stdout and "2/2 ranks ran the training function" in r.stdout
    assert "cell 4/4 ok" in r.stderr  # progress, plain lines when stderr is not a terminal
    assert report["cleanup"]["left_running"] == [] and set(report["cleanup"]["ports"].values()) == {"free"}
    assert not any(running(p) for p in report["cleanup"]["processes"])


@needs_kernel
def test_trainer_notebook_passes_with_two_ranks_and_smoke_caps_the_work(tmp_path):
    nb = notebook(
        tmp_path / "trainer.ipynb",
        "import os\nimport torch\nimport lightning as L",
        TINY_MODULE,
        "md:## Train",
        "trainer = L.Trainer(max_epochs=50, devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)\ntrainer.fit(Tiny())",
    )
    r, report = nbrefactor_run(nb)
    assert r.returncode == 0, r.stdout + r.stderr
    assert report["verdict"] == "pass" and report["ranks"] == 2
    assert report["launches"][0]["kind"] == "trainer" and report["launches"][0]["cell"] == 4
    changed = report["overrides"][0]["changed"]
    assert changed["max_epochs"] == [50, 1] and changed["strategy"] == ["(default)", "ddp_notebook"]
    # each forked process wrote down its own training steps: two ranks, one epoch of 2 batches each
    steps = {p.name: p.read_text().split() for p in tmp_path.glob("steps-*")}
    assert len(steps) == 2 and all(s == ["0", "1"] for s in steps.values())
    assert {int(name.split("-")[1]) for name in steps} == {r_["pid"] for r_ in report["launches"][0]["ranks"]}


# -- end to end: failures placed at their cell and line -------------------------------------------


@needs_kernel
def test_launch_without_a_function_is_nbr301_at_its_cell(tmp_path):
    nb = notebook(tmp_path / "nofn.ipynb", IMPORTS, "fabric = Fabric(accelerator='cpu', devices=2)", "md:launch", "fabric.launch()\nmodel = torch.nn.Linear(2, 2)")
    r, report = nbrefactor_run(nb)
    assert r.returncode == 1
    f = report["failure"]
    assert f["rule"]["code"] == "NBR301" and (f["cell"], f["line"]) == (4, 1)
    assert f["exception"] == "TypeError" and "needs to be called with a function" in f["message"]
    assert [d["code"] for d in f["matching_findings"]] == ["NBR301"]
    assert f"{nb}:cell 4:1: NBR301" in r.stdout


@needs_kernel
def test_exception_in_the_launched_function_is_reported_with_the_childs_traceback(tmp_path):
    train = (
        "def train(fabric):\n"
        "    model = torch.nn.Linear(2, 2)\n"
        "    if fabric.global_rank >= 0:\n"
        "        raise ValueError(f'boom on rank {fabric.global_rank}')\n"
        "\n"
        "fabric.launch(train)"
    )
    nb = notebook(tmp_path / "child.ipynb", IMPORTS, "fabric = Fabric(accelerator='cpu', devices=2)", "x = 1", train)
    r, report = nbrefactor_run(nb)
    assert r.returncode == 1
    f = report["failure"]
    assert (f["cell"], f["line"], f["running_cell"]) == (4, 4, 4)
    assert f["child"]["exception"] == "ValueError" and f["child"]["ranks_failed"] == [0, 1]
    assert 'File "cell 4", line 4, in train' in f["child"]["traceback"]
    assert f["found_by"] == "the forked process's traceback" and f["rule"] is None
    assert report["ranks"] == 0 and report["launches"][0]["ranks_started"] == 2
    assert "ValueError: boom on rank" in r.stdout


@needs_kernel
def test_exception_in_a_top_level_cell_is_reported_at_that_cell(tmp_path):
    nb = notebook(tmp_path / "top.ipynb", "x = 1", "y = 2", "md:sum", "z = x + y\nraise KeyError('top-level')", "print('never')")
    r, report = nbrefactor_run(nb)
    assert r.returncode == 1
    f = report["failure"]
    assert (f["cell"], f["line"], f["exception"]) == (4, 2, "KeyError")
    assert 'File "cell 4", line 2, in <module>' in f["traceback"]
    assert [c["status"] for c in report["cells"]] == ["ok", "ok", "skipped", "failed", "not run"]
    assert f"{nb}:cell 4:2: KeyError: 'top-level'" in r.stdout
    assert report["launches"] == [] and report["ran_on"] is None


@needs_kernel
def test_tracer_and_fork_probe_with_faked_cuda(tmp_path):
    setup = "def setup():\n    torch.cuda.init()\n    return 1"
    nb = notebook(tmp_path / "cuda.ipynb", IMPORTS, setup, "x = 1\nready = setup()", "def train(fabric):\n    return 1\n\nfabric = Fabric(accelerator='cpu', devices=2)\nfabric.launch(train)")
    r, report = nbrefactor_run(nb, fake_cuda=True)
    assert r.returncode == 1
    traced = report["cuda"]["init"]
    assert (traced["cell"], traced["line"], traced["function"], traced["running_cell"]) == (2, 2, "setup", 3)
    assert (traced["called_from"]["cell"], traced["called_from"]["line"]) == (3, 2)
    (launch,) = report["launches"]
    assert launch["probe"]["broken"] and launch["status"] == "stopped by the fork probe" and launch["ranks"] == []
    f = report["failure"]
    assert f["rule"]["code"] == "NBR101" and (f["cell"], f["line"], f["running_cell"]) == (2, 2, 4)
    assert f["found_by"] == "the tracer"
    assert any(d["code"] == "NBR101" and d["cell"] == 3 for d in f["matching_findings"])
    assert f"{nb}:cell 2:2: NBR101" in r.stdout and "called from cell 3, line 2" in r.stdout


@needs_kernel
def test_cuda_in_the_notebook_process_on_a_cpu_machine_is_nbr101():
    """The bundled example calls `.cuda()` at top level: on a CPU build the tracer still places it."""
    example = ROOT / "examples" / "fabric_bad.ipynb"
    r = subprocess.run(
        [sys.executable, "-m", "nbrefactor.launcher", str(example), "--accelerator", "cpu", "--timeout", "120"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert r.returncode == 1
    assert f"FAIL: {example}:cell 3:2: NBR101" in r.stdout and "found by the tracer" in r.stdout


# -- end to end: nothing left behind --------------------------------------------------------------


def _ready(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob("ready-*")) if p.read_text()]


@needs_kernel
def test_timeout_kills_the_kernel_and_its_forked_children_and_frees_the_port(tmp_path):
    nb = notebook(tmp_path / "hang.ipynb", IMPORTS + "\nopen('kernel.pid', 'w').write(str(os.getpid()))", HANG)
    r, report = nbrefactor_run(nb, "--timeout", "60")  # time enough for both ranks to start on a loaded machine
    assert r.returncode == 1, r.stdout + r.stderr
    assert report["outcome"] == "timeout" and report["cells"][1]["status"] == "timeout"
    assert report["failure"]["exception"] == "Timeout" and (report["failure"]["cell"], report["failure"]["line"]) == (2, 7)
    children = _ready(tmp_path)
    assert len(children) == 2  # both ranks were running when the time ran out
    pids = [int((tmp_path / "kernel.pid").read_text())] + [c["pid"] for c in children]
    assert set(pids) <= set(report["cleanup"]["processes"])
    assert not [p for p in pids if running(p)]
    assert not listening(children[0]["port"])


@needs_kernel
def test_ctrl_c_kills_the_kernel_and_its_forked_children_and_frees_the_port(tmp_path):
    nb = notebook(tmp_path / "hang.ipynb", IMPORTS + "\nopen('kernel.pid', 'w').write(str(os.getpid()))", HANG)
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbrefactor.launcher", str(nb), "--accelerator", "cpu", "--devices", "2", "--report", str(report)],
        cwd=tmp_path,
        env=launcher_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while len(_ready(tmp_path)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        children = _ready(tmp_path)
        assert len(children) == 2, proc.communicate(timeout=30)
        assert all(running(c["pid"]) for c in children) and listening(children[0]["port"])
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "INTERRUPTED" in out
    data = json.loads(report.read_text())
    assert data["verdict"] == "interrupted" and data["cleanup"]["left_running"] == []
    pids = [int((tmp_path / "kernel.pid").read_text())] + [c["pid"] for c in children]
    assert not [p for p in pids if running(p)]
    assert not listening(children[0]["port"])


# -- end to end: --fix and --compare ------------------------------------------------------------


@needs_kernel
@pytest.mark.skipif(find_spec("nbrefactor.fixer") is None, reason="nbrefactor.fixer not present")
def test_compare_runs_the_notebook_and_its_fixed_copy(tmp_path):
    nb = notebook(
        tmp_path / "toplevel.ipynb",
        IMPORTS,
        "fabric = Fabric(accelerator='cpu', devices=2)",
        "net = torch.nn.Linear(4, 1)\nsgd = torch.optim.SGD(net.parameters(), lr=0.1)\nmodel, optimizer = fabric.setup(net, sgd)",
        "for step in range(3):\n    loss = model(torch.randn(8, 4)).sum()\n    fabric.backward(loss)\n    optimizer.step()\n    optimizer.zero_grad()",
    )
    before = nb.read_bytes()
    r, report = nbrefactor_run(nb, "--compare")
    original, fixed = report["original"], report["fixed"]
    assert original["verdict"] == "fail" and original["failure"]["rule"]["code"] == "NBR302"
    assert (original["failure"]["cell"], original["failure"]["line"]) == (3, 3)
    assert fixed["copy"] == "fixed" and [c["code"] for c in fixed["fix"]["changes"]] == ["NBR302"]
    assert fixed["verdict"] == "pass" and fixed["ranks"] == 2, r.stdout
    assert r.returncode == 0  # the verdict of the fixed copy
    assert nb.read_bytes() == before
    table = r.stdout[r.stdout.index("original") - 10 :]
    assert "verdict   FAIL" in table and "PASS" in table


# -- errors: exit 2, one line -----------------------------------------------------------------


def _invoke(*args):
    from click.testing import CliRunner

    from nbrefactor.launcher.command import run

    return CliRunner().invoke(run, list(args))


@pytest.mark.parametrize(
    "make, args, message",
    [
        (None, ["missing.ipynb"], "error: missing.ipynb: no such file"),
        ("bad.ipynb", ["bad.ipynb"], "error: bad.ipynb: not valid JSON"),
        ("ok.ipynb", ["ok.ipynb", "--devices", "0"], "error: ok.ipynb: Invalid value for '--devices'"),
        ("ok.ipynb", ["ok.ipynb", "-o", "ok.ipynb"], "error: ok.ipynb: ok.ipynb is the notebook itself"),
        ("r.ipynb", ["r.ipynb"], "error: r.ipynb: the kernel language is r"),
    ],
)
def test_what_the_launcher_cannot_run_is_one_line_and_exit_2(tmp_path, monkeypatch, make, args, message):
    monkeypatch.chdir(tmp_path)
    if make == "bad.ipynb":
        Path(make).write_text('{"cells": [')
    elif make == "ok.ipynb":
        Path(make).write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    elif make == "r.ipynb":
        Path(make).write_text('{"cells": [], "metadata": {"kernelspec": {"name": "ir", "language": "R"}}, "nbformat": 4, "nbformat_minor": 5}')
    result = _invoke(*args)
    assert result.exit_code == 2
    err = result.stderr if hasattr(result, "stderr") else result.output
    assert err.count("\n") == 1 and err.startswith(message), err
    assert "Traceback" not in result.output


@needs_kernel
def test_a_kernel_that_does_not_start_is_exit_2(tmp_path):
    nb = notebook(tmp_path / "nb.ipynb", "x = 1")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ipykernel_launcher.py").write_text("raise SystemExit(3)\n")  # found first on PYTHONPATH
    r = subprocess.run(
        [sys.executable, "-m", "nbrefactor.launcher", str(nb)],
        env={**os.environ, "PYTHONPATH": f"{broken}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == f"error: {nb}: the Python kernel did not start: Kernel died before replying to kernel_info"
    assert "Traceback" not in r.stderr


@needs_kernel
def test_a_jupytext_notebook_runs_and_a_run_without_a_launch_says_it_proves_nothing(tmp_path):
    nb = tmp_path / "nb.py"
    nb.write_text("# %% [markdown]\n# Text notebook\n\n# %%\nx = 1\n\n# %%\nprint(x + 1)\n")
    r, report = nbrefactor_run(nb)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [c["status"] for c in report["cells"]] == ["skipped", "ok", "ok"]
    assert report["ranks"] == 0 and "nothing was forked" in report["warnings"][0]


def test_importing_the_command_imports_nothing_heavy():
    code = "import sys, nbrefactor.launcher.command; print(sorted(m for m in ('torch', 'lightning', 'nbclient', 'jupyter_client', 'nbformat') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]", out.stderr


# -- the kernel side, in process --------------------------------------------------------------


@pytest.fixture
def kernel_state(tmp_path, monkeypatch):
    """The preamble's state as `install` leaves it, without a kernel: this process is the notebook."""
    from nbrefactor.launcher import preamble

    state = preamble._State({"run_dir": str(tmp_path), "accelerator": "cpu", "devices": 2, "smoke": True, "smoke_batches": 2})
    monkeypatch.setattr(preamble, "STATE", state)
    return state


def _cell(state, number: int, source: str, namespace: dict):
    """Run `source` as notebook cell `number` (compiled under its own filename, as IPython does)."""
    filename = f"<nbrefactor-test-cell-{number}>"
    state.cell_files[filename] = number - 1
    state.cell = number - 1
    import linecache

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)


def test_tracer_records_the_first_cuda_initialisation_at_its_cell_and_line(kernel_state, tmp_path):
    from nbrefactor.launcher import preamble

    calls = []
    cuda = types.SimpleNamespace(_lazy_init=lambda: calls.append("init"), is_initialized=lambda: bool(calls))
    preamble._patch_torch_cuda(cuda)
    ns = {"cuda": cuda}
    _cell(kernel_state, 2, "def setup():\n    cuda._lazy_init()\n", ns)
    _cell(kernel_state, 3, "x = 1\nsetup()\ncuda._lazy_init()\n", ns)
    assert calls == ["init", "init"]  # the original still runs
    first = kernel_state.cuda["init"]
    assert (first["cell"], first["line"], first["function"], first["running_cell"]) == (2, 2, "setup", 3)
    assert (first["called_from"]["cell"], first["called_from"]["line"]) == (3, 2)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["cuda"]  # the second call is not recorded


def test_tracer_records_a_fork_poisoning_device_query(kernel_state, monkeypatch):
    from nbrefactor.launcher import preamble

    count = preamble._probe_tracer(lambda: 0)
    ns = {"count": count}
    _cell(kernel_state, 5, "n = count()\n", ns)
    probe = kernel_state.cuda["probe"]
    assert (probe["kind"], probe["cell"], probe["line"]) == ("probe", 5, 1)


def test_tracer_ignores_forked_children(kernel_state):
    from nbrefactor.launcher import preamble

    kernel_state.child = (1, 0)
    preamble.trace_cuda("init")
    assert kernel_state.cuda == {}


def _fake_torch(initialized: bool, poisoned: bool):
    parent = os.getpid()
    cuda = types.SimpleNamespace(
        is_initialized=lambda: initialized,
        _is_in_bad_fork=lambda: poisoned and os.getpid() != parent,
    )
    return types.SimpleNamespace(cuda=cuda)


@pytest.mark.parametrize(
    "initialized, poisoned, broken, reason",
    [
        (False, False, False, None),
        (True, True, True, "CUDA is initialised in the notebook process"),
        (False, True, True, "fork is poisoned"),  # torch.cuda.is_initialized() is False, yet children fail (accelerate#940)
    ],
)
def test_fork_probe_asks_a_forked_child(kernel_state, monkeypatch, initialized, poisoned, broken, reason):
    from nbrefactor.launcher import preamble

    monkeypatch.setitem(sys.modules, "torch", _fake_torch(initialized, poisoned))
    probe = preamble.fork_probe(use_cuda=False)
    assert probe["broken"] is broken
    assert (probe["reason"] is None) if reason is None else reason in probe["reason"]


@pytest.mark.parametrize(
    "given, trainer, expected",
    [
        ("auto", True, "ddp_notebook"),
        (None, False, "ddp_notebook"),
        ("ddp", True, "ddp_notebook"),
        ("ddp_spawn", False, "ddp_notebook"),
        ("ddp_find_unused_parameters_true", True, "ddp_notebook_find_unused_parameters_true"),
        ("deepspeed", True, "deepspeed"),  # no fork variant: Lightning then says why (NBR401)
    ],
)
def test_strategies_become_their_fork_variant(given, trainer, expected):
    from nbrefactor.launcher.preamble import fork_strategy

    assert fork_strategy(given, "lightning.pytorch", trainer) == expected


def test_overrides_force_devices_strategy_and_smoke_limits(kernel_state):
    from nbrefactor.launcher.preamble import overrides

    kernel_state.target = ("cpu", 2)
    kwargs, changed = overrides("Trainer", {"devices": 1, "strategy": "ddp", "max_epochs": 20, "precision": "16-mixed"}, "lightning.pytorch")
    assert kwargs["devices"] == 2 and kwargs["strategy"] == "ddp_notebook" and kwargs["accelerator"] == "cpu"
    assert kwargs["max_epochs"] == 1 and kwargs["limit_train_batches"] == 2 and kwargs["precision"] == "32-true"
    assert set(changed) == {"accelerator", "devices", "strategy", "max_epochs", "precision"}
    kwargs, changed = overrides("Fabric", {"accelerator": "cpu", "devices": 2}, "lightning.fabric")
    assert "limit_train_batches" not in kwargs and set(changed) == {"strategy"}


# -- the report: messages to rules ------------------------------------------------------------


def _result(evalue: str, events=(), ranks=(), outcome="failed"):
    from nbrefactor.launcher.runner import CellRun, RunResult

    cells = [CellRun(1, "code", "ok", 0.1), CellRun(2, "code", "failed", 0.2, {"ename": "RuntimeError", "evalue": evalue, "traceback": ""})]
    return RunResult(outcome=outcome, cells=cells, seconds=1.0, events=list(events), ranks=list(ranks), kernel_pid=1)


TRACED_INIT = {"event": "cuda", "kind": "init", "cell": 1, "line": 3, "code": "x = t.cuda()", "running_cell": 1, "lightning_imported": True}
TRACED_QUERY = {"event": "cuda", "kind": "probe", "cell": 1, "line": 1, "code": "torch.cuda.is_available()", "running_cell": 1, "lightning_imported": False}


@pytest.mark.parametrize(
    "evalue, events, code, where",
    [
        ("\n\n-- Process 0 terminated with the following error:\nRuntimeError: Cannot re-initialize CUDA in forked subprocess. To use CUDA", [TRACED_INIT], "NBR101", (1, 3)),
        ("Lightning can't create new processes if CUDA is already initialized.", [TRACED_INIT], "NBR101", (1, 3)),
        ("Cannot re-initialize CUDA in forked subprocess.", [TRACED_QUERY], "NBR102", (1, 1)),
        ("To spawn processes with the `DDPStrategy` strategy, `.launch()` needs to be called with a function", [], "NBR301", (2, None)),
        ("`Trainer(strategy='ddp')` is not compatible with an interactive environment. Run your code as a script", [], "NBR401", (2, None)),
        ("To use Fabric with more than one device, you must call `.launch()` or use the CLI: `fabric run --help`.", [], "NBR302", (2, None)),
        ("Calling `trainer.fit()` twice on the same Trainer instance using a spawn-based strategy is not supported.", [], "NBR303", (2, None)),
        ("something else entirely", [], None, (2, None)),
    ],
)
def test_failures_are_explained_by_rules(evalue, events, code, where):
    from nbrefactor.launcher.report import build, render_text
    from nbrefactor.launcher.runner import RunSettings

    report = build(_result(evalue, events), path="nb.ipynb", settings=RunSettings())
    f = report["failure"]
    assert report["verdict"] == "fail"
    assert (f["rule"] or {}).get("code") == code
    assert (f["cell"], f["line"]) == where
    text = render_text(report)
    assert text.splitlines()[-1].strip().startswith("nothing left running")
    assert ("NBR" in text) == (code is not None)


def test_a_timeout_with_every_rank_done_but_rank_0_blames_the_return_value():
    from nbrefactor.launcher.report import build
    from nbrefactor.launcher.runner import RunSettings

    events = [{"event": "launch", "launch": 1, "kind": "fabric", "processes": 2, "cell": 2, "line": 1, "code": "fabric.launch(train)", "probe": {"broken": False}}]
    ranks = [{"launch": 1, "rank": 0, "pid": 10, "status": "returned"}, {"launch": 1, "rank": 1, "pid": 11, "status": "finished"}]
    result = _result("", events, ranks, outcome="timeout")
    result.cells[1].status, result.cells[1].error = "timeout", None
    f = build(result, path="nb.ipynb", settings=RunSettings())["failure"]
    assert f["exception"] == "Timeout" and (f["cell"], f["line"]) == (2, 1)
    assert "64 KiB" in f["hint"]


# -- processes, ports, progress ---------------------------------------------------------------


def test_process_tree_kill_and_port_checks():
    from nbrefactor.launcher import processes

    shell = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(processes.process_tree(shell.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = processes.process_tree(shell.pid)
        assert len(tree) == 3 and shell.pid in tree
        processes.kill_all(tree, shell.pid)
        assert processes.wait_gone(tree) == []
        assert not any(running(p) for p in tree)
    finally:
        shell.kill()
        shell.wait()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert processes.port_listening(port)
    assert not processes.port_listening(port)



def test_the_rendezvous_port_is_outside_the_range_outgoing_connections_take():
    """CI failed once with EADDRINUSE: a port from bind(0), chosen when the run started, had become
    the local end of some outgoing connection by the time the notebook launched."""
    from nbrefactor.launcher import processes

    low, high = processes._ephemeral_ports()
    ports = {processes.free_port() for _ in range(20)}
    if low > 10000:
        assert all(10000 <= p < low for p in ports)
    assert len(ports) > 1  # drawn at random: two runs at once rarely draw the same
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))

def test_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one():
    import io

    from nbrefactor.launcher.progress import Progress

    plain = io.StringIO()
    p = Progress(5, 3, stream=plain, verbose=True)
    p.start_cell(2, "# comment\nx = 1")
    p.output("half a ")
    p.output("line\nnext")
    p.end_cell(2, "ok", 0.5)
    assert plain.getvalue().splitlines() == ["half a line", "next", "cell 2/5 ok 0.50s (0:00)"]

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    p = Progress(5, 3, stream=tty)
    p.start_cell(4, "fabric.launch(train)")
    p.close()
    assert "\r\x1b[2K[" in tty.getvalue() and "cell 4/5" in tty.getvalue() and "fabric.launch(train)" in tty.getvalue()
