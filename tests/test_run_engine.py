"""`nbrefactor run NB --engine torchrun|fabric|accelerate`: the exported script under the real
launcher, on 2 CPU processes, reported as `run` reports: the ranks and their exit codes, the failing
rank's traceback placed in the notebook's cell and line, the command, and nothing left running;
`--engine slurm` and an engine that does not launch the notebook's kind refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nbrefactor.launcher import processes
from tests.conftest import ROOT, run_cli

TRAINER = ROOT / "golden" / "trainer_synthetic" / "input.ipynb"
FABRIC = ROOT / "golden" / "fabric_script_style" / "input.ipynb"
ACCELERATE = ROOT / "golden" / "accelerate_tutorial_top_level" / "expected.ipynb"  # notebook_launcher, Accelerator(cpu=True)
ACCELERATE_TOP_LEVEL = ROOT / "golden" / "accelerate_tutorial_top_level" / "input.ipynb"  # NBR305: not exportable
CPU2 = ("--accelerator", "cpu", "--devices", "2", "--timeout", "400")

FAILING = [
    "import torch\nimport lightning as L\nfrom torch.utils.data import DataLoader, TensorDataset",
    # cell 2: rank 1 fails in its first training step, line 8 of the cell
    ("class Line(L.LightningModule):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.layer = torch.nn.Linear(1, 1)\n"
    "\n"
    "    def training_step(self, batch, batch_idx):\n"
    "        if self.global_rank == 1:\n"
    "            raise ValueError(f'bad batch {batch_idx} on rank {self.global_rank}')\n"
    "        x, y = batch\n"
    "        return torch.nn.functional.mse_loss(self.layer(x), y)\n"
    "\n"
    "    def configure_optimizers(self):\n"
    "        return torch.optim.SGD(self.parameters(), lr=0.1)\n"
    "\n"
    "    def train_dataloader(self):\n"
    "        x = torch.linspace(0, 1, 32).unsqueeze(1)\n"
    "        return DataLoader(TensorDataset(x, 2 * x + 1), batch_size=8)"),
    ("trainer = L.Trainer(accelerator='cpu', devices=2, max_epochs=1, enable_progress_bar=False,\n"
    "                    enable_model_summary=False, logger=False, enable_checkpointing=False)\n"
    "trainer.fit(Line())"),
]


ACCELERATE_FAILING = [
    "import torch\nfrom accelerate import Accelerator, notebook_launcher",
    # cell 2: process 1 fails after joining the group, line 5 of the cell
    ("def training_function():\n"
     "    accelerator = Accelerator(cpu=True)\n"
     "    model = accelerator.prepare(torch.nn.Linear(1, 1))\n"
     "    if accelerator.process_index == 1:\n"
     "        raise ValueError(f'bad data on process {accelerator.process_index}')\n"
     "    accelerator.print('trained', sum(p.numel() for p in model.parameters()))"),
    "notebook_launcher(training_function, num_processes=2)",
]


def _notebook(folder: Path, sources: list[str]) -> Path:
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": s} for i, s in enumerate(sources)]
    path = folder / "nb.ipynb"
    meta = {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}}
    path.write_text(json.dumps({"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))
    return path


def _run(notebook: Path, *args: str):
    """`nbrefactor run` in the notebook's folder: (exit code, stdout, stderr, the --report JSON)."""
    report = notebook.parent / "report.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "HF_HOME": str(notebook.parent / "hf")}  # no accelerate config of this machine's user
    r = subprocess.run([sys.executable, "-m", "nbrefactor", "run", notebook.name, *args, "--report", str(report)],
                       cwd=notebook.parent, env=env, capture_output=True, timeout=500, check=False)
    data = json.loads(report.read_text()) if report.exists() else None
    return r.returncode, r.stdout.decode(), r.stderr.decode(), data


def _nothing_left(report: dict) -> None:
    cleanup = report["cleanup"]
    assert cleanup["left_running"] == [] and set(cleanup["ports"].values()) == {"free"}, cleanup
    pids = [r["pid"] for r in report["launches"][0]["ranks"] if r["pid"]] + [cleanup["launcher_pid"]]
    assert not [p for p in pids if processes.alive(p)], "a process of the run is still running"


def _golden_run(tmp_path_factory, golden: Path, engine: str):
    """The golden notebook copied to a folder of its own and run under `engine`."""
    folder = tmp_path_factory.mktemp(engine)
    shutil.copy(golden, folder / "nb.ipynb")
    return _run(folder / "nb.ipynb", "--engine", engine, *CPU2)


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory):
    return _golden_run(tmp_path_factory, TRAINER, "torchrun")


def test_trainer_golden_passes_under_torchrun_on_two_ranks(trainer_run):
    code, out, err, report = trainer_run
    assert code == 0, out + err[-3000:]
    assert report["verdict"] == "pass" and report["ranks"] == 2 and report["copy"] == "exported"
    ranks = report["launches"][0]["ranks"]
    assert [(r["rank"], r["exit_code"], r["member"]) for r in ranks] == [(0, 0, "MEMBER: 1/2"), (1, 0, "MEMBER: 2/2")]
    assert all(isinstance(r["pid"], int) for r in ranks)
    assert report["engine"]["command"].startswith("torchrun --nnodes 1 --nproc_per_node 2 ")
    assert report["engine"]["command"].endswith("train.py --accelerator cpu --devices 2")
    assert "PASS" in out and "2 ranks exited 0 under torchrun" in out and "nothing left running" in out


def test_trainer_run_leaves_nothing_running(trainer_run):
    _nothing_left(trainer_run[3])


def test_failing_rank_is_named_with_the_notebook_cell_and_line(tmp_path):
    code, out, err, report = _run(_notebook(tmp_path, FAILING), "--engine", "torchrun", *CPU2)
    assert code == 1, out + err[-3000:]
    failure = report["failure"]
    assert report["verdict"] == "fail" and failure["rank"] == 1 and failure["ranks_failed"] == [1]
    assert (failure["cell"], failure["line"], failure["exception"]) == (2, 8, "ValueError"), failure
    assert failure["message"] == "bad batch 0 on rank 1" and "raise ValueError" in failure["code"]
    assert not failure["fixed_cell"]
    rank1 = next(r for r in report["launches"][0]["ranks"] if r["rank"] == 1)
    assert rank1["exit_code"] == 1 and rank1["status"] == "failed"
    assert "FAIL" in out and "nb.ipynb:cell 2:8: ValueError: bad batch 0 on rank 1" in out and "found by rank 1's traceback" in out
    assert "in training_step   <- nb.ipynb, cell 2, line 8" in out
    _nothing_left(report)


def test_fabric_notebook_passes_under_fabric_run(tmp_path):
    if not (Path(sys.executable).parent / "fabric").exists() and not shutil.which("fabric"):
        pytest.skip("the `fabric` CLI (lightning.fabric) is not installed beside this Python")
    shutil.copy(FABRIC, tmp_path / "nb.ipynb")
    code, out, err, report = _run(tmp_path / "nb.ipynb", "--engine", "fabric", *CPU2)
    assert code == 0, out + err[-3000:]
    assert report["ranks"] == 2 and report["engine"]["command"].startswith("fabric run --accelerator cpu --devices 2 ")
    assert sorted(r["member"] for r in report["launches"][0]["ranks"]) == ["MEMBER: 1/2", "MEMBER: 2/2"]
    _nothing_left(report)


def test_fabric_engine_refuses_a_trainer_notebook_in_one_line(tmp_path):
    shutil.copy(TRAINER, tmp_path / "nb.ipynb")
    r = run_cli("run", "nb.ipynb", "--engine", "fabric", cwd=tmp_path)
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error: nb.ipynb: --engine fabric runs Fabric notebooks"), err


@pytest.fixture(scope="module")
def accelerate_run(tmp_path_factory):
    pytest.importorskip("accelerate", reason="accelerate is not installed")
    return _golden_run(tmp_path_factory, ACCELERATE, "accelerate")


def test_accelerate_golden_passes_under_accelerate_launch_on_two_ranks(accelerate_run):
    code, out, err, report = accelerate_run
    assert code == 0, out + err[-3000:]
    assert report["verdict"] == "pass" and report["ranks"] == 2 and report["warnings"] == []
    ranks = report["launches"][0]["ranks"]
    assert [(r["rank"], r["exit_code"], r["status"]) for r in ranks] == [(0, 0, "finished"), (1, 0, "finished")]
    assert all(isinstance(r["pid"], int) for r in ranks) and ranks[0]["pid"] != ranks[1]["pid"]
    port = report["launches"][0]["port"]
    assert report["engine"]["command"].startswith(f"accelerate launch --multi_gpu --num_processes 2 --main_process_port {port} ")
    assert report["engine"]["command"].endswith("train.py --cpu")
    assert "PASS" in out and "2 ranks exited 0 under accelerate" in out and "nothing left running" in out


def test_accelerate_run_leaves_nothing_running(accelerate_run):
    _nothing_left(accelerate_run[3])


def test_failing_accelerate_process_is_named_with_the_notebook_cell_and_line(tmp_path):
    pytest.importorskip("accelerate", reason="accelerate is not installed")
    code, out, err, report = _run(_notebook(tmp_path, ACCELERATE_FAILING), "--engine", "accelerate", *CPU2)
    assert code == 1, out + err[-3000:]
    failure = report["failure"]
    assert report["verdict"] == "fail" and failure["rank"] == 1 and failure["ranks_failed"] == [1]
    assert (failure["cell"], failure["line"], failure["exception"]) == (2, 5, "ValueError"), failure
    assert failure["message"] == "bad data on process 1" and "raise ValueError" in failure["code"]
    rank1 = next(r for r in report["launches"][0]["ranks"] if r["rank"] == 1)
    assert rank1["exit_code"] == 1 and rank1["status"] == "failed" and isinstance(rank1["pid"], int)
    assert "nb.ipynb:cell 2:5: ValueError: bad data on process 1" in out and "found by rank 1's traceback" in out
    assert "in training_function   <- nb.ipynb, cell 2, line 5" in out
    _nothing_left(report)


@pytest.mark.parametrize("notebook, engine, error", [
    (ACCELERATE, "slurm", ("--engine slurm: `nbrefactor run` cannot start a SLURM job; export the script and its batch file, "
                           "then submit it: nbrefactor export nb.ipynb -o train.py --engine slurm && sbatch train.sbatch")),
    (TRAINER, "slurm", "--engine slurm: `nbrefactor run` cannot start a SLURM job;"),
    (ACCELERATE, "torchrun", "--engine torchrun runs Lightning (Trainer, Fabric) notebooks; this one trains with Accelerate: use --engine accelerate"),
    (ACCELERATE, "fabric", "--engine fabric runs Fabric notebooks; this one trains with Accelerate: use --engine accelerate"),
    (TRAINER, "accelerate", "--engine accelerate runs Accelerate notebooks; this one trains with a Trainer: use --engine torchrun"),
    (ACCELERATE_TOP_LEVEL, "accelerate", "cannot export: the Accelerate training runs at top level, with no notebook_launcher (NBR305)"),
], ids=["slurm-accelerate", "slurm-trainer", "torchrun-accelerate", "fabric-accelerate", "accelerate-trainer", "accelerate-top-level"])
def test_engine_refusals_are_one_error_line(tmp_path, notebook, engine, error):
    shutil.copy(notebook, tmp_path / "nb.ipynb")
    r = run_cli("run", "nb.ipynb", "--engine", engine, "--accelerator", "cpu", "--devices", "2", cwd=tmp_path)
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith(f"error: nb.ipynb: {error}"), err
    assert r.stdout == b"" and not (tmp_path / "train.py").exists()
