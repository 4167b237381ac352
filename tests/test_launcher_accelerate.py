"""`nbrefactor run` on Accelerate notebooks: a real kernel, real Accelerate on CPU, 2 forked processes.

`notebook_launcher(fn, num_processes=8)` is forced to the devices asked for; on CPU the launcher
forks them the way Accelerate's `debug_launcher` does (gloo, `ACCELERATE_USE_CPU`), and each child
reports its rank, and what the notebook's own `Accelerator()` says it is, from inside the function.
"""

from __future__ import annotations

import json
from importlib.util import find_spec

import pytest

from tests.test_launcher import nbrefactor_run, needs_kernel, notebook, running

needs_accelerate = pytest.mark.skipif(find_spec("accelerate") is None, reason="needs accelerate (the `run` extra)")

IMPORTS = "import os, json\nimport torch\nfrom accelerate import Accelerator, notebook_launcher"

# the safe layout: everything that touches a device is made inside the launched function
TRAINING_FUNCTION = '''def training_function(steps):
    accelerator = Accelerator()
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    done = 0
    for x, y in loader:
        loss = torch.nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        done += 1
        if done == steps:
            break
    with open(f"rank-{accelerator.process_index}.json", "w") as f:
        json.dump({"pid": os.getpid(), "process_index": accelerator.process_index,
                   "num_processes": accelerator.num_processes, "batches": len(loader), "steps": done}, f)
    accelerator.print(f"trained {done} steps on {accelerator.num_processes} processes")'''

LAUNCH = "notebook_launcher(training_function, args=(3,), num_processes=8)"


@needs_kernel
@needs_accelerate
def test_safe_accelerate_notebook_passes_with_two_ranks_from_the_children(tmp_path):
    nb = notebook(tmp_path / "accelerate.ipynb", "md:# Accelerate", IMPORTS, TRAINING_FUNCTION, "md:## Launch", LAUNCH)
    r, report = nbrefactor_run(nb)
    assert r.returncode == 0, r.stdout + r.stderr
    assert report["verdict"] == "pass" and report["ranks"] == 2
    (launch,) = report["launches"]
    assert (launch["kind"], launch["cell"], launch["line"], launch["processes"]) == ("accelerate", 5, 1, 2)
    assert [x["rank"] for x in launch["ranks"]] == [0, 1] and {x["status"] for x in launch["ranks"]} == {"finished"}
    pids = {x["pid"] for x in launch["ranks"]}
    assert len(pids) == 2 and report["cleanup"]["kernel_pid"] not in pids  # forked, not the kernel
    # inside each child the notebook's own Accelerator is one CPU process of a world of 2, on a half of the data
    seen = {json.loads((tmp_path / f"rank-{i}.json").read_text())["pid"]: json.loads((tmp_path / f"rank-{i}.json").read_text()) for i in (0, 1)}
    assert set(seen) == pids
    assert sorted((s["process_index"], s["num_processes"], s["batches"], s["steps"]) for s in seen.values()) == [(0, 2, 4, 3), (1, 2, 4, 3)]
    (override,) = report["overrides"]
    assert (override["kind"], override["cell"], override["line"], override["changed"]) == ("notebook_launcher", 5, 1, {"num_processes": [8, 2]})
    assert "override at cell 5, line 1: notebook_launcher(num_processes 8 -> 2)" in r.stdout
    assert "launch 1 (notebook_launcher): 2/2 ranks ran the training function" in r.stdout
    assert "PASS" in r.stdout and "2 ranks ran the training function, as the forked processes reported" in r.stdout
    assert report["ran_on"] == {"accelerator": "cpu", "devices": 2, "strategy": "notebook_launcher"}
    assert report["cleanup"]["left_running"] == [] and set(report["cleanup"]["ports"].values()) == {"free"}
    assert not any(running(p) for p in report["cleanup"]["processes"])


@needs_kernel
@needs_accelerate
def test_accelerator_made_before_the_launcher_fails_at_its_cell(tmp_path):
    nb = notebook(tmp_path / "early.ipynb", IMPORTS, "x = 1\naccelerator = Accelerator()", TRAINING_FUNCTION, LAUNCH)
    r, report = nbrefactor_run(nb)
    assert r.returncode == 1, r.stdout + r.stderr
    f = report["failure"]
    assert f["running_cell"] == 4 and f["exception"] == "ValueError"
    assert "the `Accelerator` should only be initialized inside your training function" in f["message"]
    # placed where the Accelerator was made, not where Accelerate noticed it
    assert (f["cell"], f["line"], f["code"], f["found_by"]) == (2, 2, "accelerator = Accelerator()", "the tracer")
    assert report["accelerator"]["cell"] == 2 and report["launches"] == []  # nothing was forked
    assert f["rule"]["code"] == "NBR103"
    assert f"FAIL: {nb}:cell 2:2: NBR103" in r.stdout and "the failure surfaced in cell 4" in r.stdout
    assert r.stdout.startswith(f"nbrefactor run {nb}: cpu x 2 (notebook_launcher)")
    from codemods.rules import RULES_BY_CODE

    if "NBR103" in RULES_BY_CODE:  # the static rule (accelerate-state-before-launcher)
        assert f["rule"]["name"] == RULES_BY_CODE["NBR103"].name and "see: nbrefactor rules NBR103" in r.stdout


@pytest.mark.parametrize(
    "evalue, code",
    [
        ("To launch a multi-device training from your notebook, the `Accelerator` should only be initialized inside your training function.", "NBR103"),
        ("Could not start distributed process. Libraries known to initialize device upon import have been imported already.\n\t* `bitsandbytes`", "NBR104"),
        ("CUDA has been initialized before the `notebook_launcher` could create a forked subprocess. This likely stems", "NBR101"),
        ("You have to specify the number of devices you would like to use, add `num_processes=...` to your call.", "NBR403"),
    ],
)
def test_accelerate_messages_are_explained_by_rules(evalue, code):
    from nbrefactor.launcher.report import build, render_text
    from nbrefactor.launcher.runner import RunSettings
    from tests.test_launcher import _result

    report = build(_result(evalue), path="nb.ipynb", settings=RunSettings())
    assert report["failure"]["rule"]["code"] == code
    fail = next(line for line in render_text(report).splitlines() if line.startswith("FAIL"))
    assert fail.startswith(f"FAIL: nb.ipynb:cell 2: {code} ") and "None" not in fail  # a rule not registered yet shows the error


def test_launcher_overrides_force_the_processes_and_leave_a_missing_count_to_accelerate(tmp_path, monkeypatch):
    from nbrefactor.launcher import preamble

    monkeypatch.setattr(preamble, "STATE", preamble._State({"run_dir": str(tmp_path), "accelerator": "cpu", "devices": 2}))
    monkeypatch.setenv("MASTER_PORT", "40123")
    preamble.STATE.target = ("cpu", 2)
    args = {"function": print, "args": (), "num_processes": 8, "num_nodes": 1, "node_rank": 0, "use_port": "29500"}
    new, changed = preamble.launcher_overrides(args)
    assert (new["num_processes"], new["use_port"], changed) == (2, "40123", {"num_processes": (8, 2)})
    new, changed = preamble.launcher_overrides({**args, "num_processes": None})
    assert new["num_processes"] is None and changed == {}  # Accelerate raises: NBR403


@needs_accelerate
def test_the_cuda_path_entry_records_the_ranks_torchs_elastic_launch_gives(tmp_path, monkeypatch):
    """On CUDA the run keeps Accelerate's own `elastic_launch`; its forked processes record their ranks
    through `elastic_entry` (checked here on CPU: no GPU is needed to fork through torch's launcher)."""
    import functools
    import os

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from nbrefactor.launcher import preamble
    from nbrefactor.launcher.processes import free_port

    monkeypatch.setattr(preamble, "STATE", preamble._State({"run_dir": str(tmp_path), "accelerator": "cuda", "devices": 2}))
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=2, run_id="none", rdzv_endpoint=f"127.0.0.1:{free_port()}",
        rdzv_backend="static", rdzv_configs={"rank": 0}, max_restarts=0, monitor_interval=0.1, start_method="fork",
    )
    out = elastic_launch(config=config, entrypoint=preamble.elastic_entry(1, functools.partial(_rank_and, "x")))(7)
    assert out == {0: (0, "x", 7), 1: (1, "x", 7)}
    ranks = sorted((json.loads(p.read_text()) for p in tmp_path.glob("rank-1-*.json")), key=lambda r: r["rank"])
    assert [(r["rank"], r["status"]) for r in ranks] == [(0, "finished"), (1, "finished")]
    assert os.getpid() not in {r["pid"] for r in ranks}


def _rank_and(tag, x):
    import os

    return int(os.environ["RANK"]), tag, x
