"""`nbrefactor export`: the script runs under real launchers (torchrun on 2 CPU processes, two
torchrun "nodes" on this machine, `fabric run`, `accelerate launch` on 2 CPU processes) and prints
what the notebook printed in one process; the sbatch file, `--check`, errors, and the goldens in
golden_export/ byte for byte."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nbrefactor import export as ex
from nbrefactor.launcher.processes import free_port
from nbrefactor.notebook.model import read_notebook
from tests.conftest import ROOT, run_cli
from tests.kernel import ONE_PROCESS_CELL, single_process_env

TRAINER = "golden/trainer_synthetic/input.ipynb"
FABRIC = "golden/fabric_script_style/input.ipynb"
ACCELERATE_ORIGINAL = "golden/accelerate_tutorial_top_level/input.ipynb"  # Accelerate training at top level (NBR305)
ACCELERATE = "golden/accelerate_tutorial_top_level/expected.ipynb"  # as `fix --devices 2` leaves it: notebook_launcher
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
CASES = sorted(p for p in (ROOT / "golden_export").iterdir() if (p / "case.json").is_file())


def _export(notebook: str, folder: Path, *args: str) -> Path:
    script = folder / "train.py"
    r = run_cli("export", notebook, "-o", str(script), *args, cwd=ROOT)
    assert r.returncode == 0, r.stderr.decode()
    return script


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command's result; past 240 s its whole process group (a launcher's workers too) is killed."""
    with subprocess.Popen(cmd, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True) as p:
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            pytest.fail(f"{' '.join(cmd[:4])} ran past 240 s: {err[-2000:]}")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _lines(text: str) -> list[str]:
    return sorted(" ".join(line.split()) for line in text.splitlines() if line.strip())


def _one_process_prints(notebook: str, tmp: Path) -> list[str]:
    """What the notebook prints run in one process (its code cells, magics left out; Lightning's
    Trainer held to one process where the notebook uses Lightning)."""
    nb = read_notebook(ROOT / notebook)
    code = "\n".join(line for c in nb.code_cells for line in c.source.split("\n") if not line.lstrip().startswith(("%", "!")))
    path = tmp / "one_process.py"
    path.write_text((ONE_PROCESS_CELL + "\n" if "lightning" in code else "") + code)
    r = _run([sys.executable, str(path)], tmp, {**ENV, **single_process_env()})
    assert r.returncode == 0, r.stderr
    return _lines(r.stdout)


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> dict[str, Path]:
    """Each notebook exported once for the tests that run it."""
    return {nb: _export(nb, tmp_path_factory.mktemp(Path(nb).parent.name)) for nb in (TRAINER, FABRIC, ACCELERATE)}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


@pytest.mark.parametrize("notebook", [TRAINER, FABRIC], ids=["trainer", "fabric"])
def test_export_runs_under_torchrun_on_two_ranks_and_prints_what_the_notebook_printed(notebook, scripts, tmp_path):
    script = scripts[notebook]
    r = _run(_torchrun("--standalone", "--nproc_per_node", "2", str(script), "--accelerator", "cpu", "--devices", "2"), tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MEMBER: 1/2" in r.stderr and "MEMBER: 2/2" in r.stderr
    assert _lines(r.stdout) == _one_process_prints(notebook, tmp_path)


def test_trainer_export_runs_on_two_nodes(scripts, tmp_path):
    script = scripts[TRAINER]
    port = str(free_port())
    agents = [
        subprocess.Popen(
            _torchrun("--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                      "--master_port", port, str(script), "--accelerator", "cpu", "--devices", "1", "--num-nodes", "2"),
            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]
    outs = [a.communicate(timeout=240) for a in agents]
    assert [a.returncode for a in agents] == [0, 0], [err[-2000:] for _, err in outs]
    assert "MEMBER: 1/2" in outs[0][1] and "MEMBER: 2/2" in outs[1][1]


def test_fabric_export_runs_under_fabric_run(scripts, tmp_path):
    fabric = Path(sys.executable).parent / "fabric"
    if not fabric.exists():
        pytest.skip("the `fabric` CLI (lightning.fabric) is not installed beside this Python")
    script = scripts[FABRIC]
    r = _run([str(fabric), "run", "--accelerator", "cpu", "--devices", "2", str(script)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MEMBER: 1/2" in r.stderr and "MEMBER: 2/2" in r.stderr
    assert "final loss 0.0 after 30 epochs" in r.stdout


def test_accelerate_export_runs_under_the_printed_accelerate_launch_on_two_cpu_processes(scripts, tmp_path):
    """The one-machine command `--engine accelerate` prints, run: `--multi_gpu` is accelerate's
    torchrun launcher (its own `--cpu` would start one process), the script's `--cpu` makes the two
    processes a gloo group. Per rank (torchrun's logs): rank 0 prints what the notebook printed in
    one process; rank 1 ran to the end and printed nothing, which it does only when its
    PartialState says it is not the main process of the group."""
    pytest.importorskip("accelerate", reason="accelerate is not installed")
    script = scripts[ACCELERATE]
    command = ex.commands(_plan(ACCELERATE), str(script), "accelerate").splitlines()[1]
    words = shlex.split(command)
    assert words[:2] == ["accelerate", "launch"] and words[-1] == "--cpu", command
    logs = tmp_path / "logs"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port()), "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--tee", "3", "--log_dir", str(logs), *words[2:]]
    r = _run(launch, tmp_path, {**ENV, "HF_HOME": str(tmp_path / "hf")})  # no accelerate config of this machine's user
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = {p.parent.name: p.read_text() for p in logs.glob("*/attempt_0/*/stdout.log")}
    assert sorted(ranks) == ["0", "1"], ranks
    assert _lines(ranks["0"]) == _one_process_prints(ACCELERATE_ORIGINAL, tmp_path)
    assert ranks["1"] == ""


def _plan(notebook: str):
    return ex.export_notebook(read_notebook(ROOT / notebook), notebook).plan


def test_sbatch_has_one_task_per_device_and_srun():
    plan = _plan(TRAINER)
    text = ex.sbatch(plan, "jobs/train.py", nodes=4)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash -l"
    assert "#SBATCH --nodes=4" in lines and "#SBATCH --ntasks-per-node=2" in lines
    assert not any("--gpus-per-node" in line for line in lines)  # the notebook trains on the CPU
    assert lines[-1] == "srun python train.py --accelerator cpu --devices 2 --num-nodes 4"
    plan.options[0].default = "gpu"
    assert "#SBATCH --gpus-per-node=2" in ex.sbatch(plan, "train.py", nodes=4).splitlines()


def test_engine_commands():
    plan = _plan(TRAINER)
    torchrun = ex.commands(plan, "train.py", "torchrun")
    assert "torchrun --standalone --nproc_per_node 2 train.py --accelerator cpu --devices 2\n" in torchrun
    assert "--nnodes 2 --node_rank $NODE_RANK --nproc_per_node 2 --master_addr $MASTER_ADDR --master_port 29500" in torchrun
    assert "fabric run --accelerator cpu --devices 2 train.py" in ex.commands(plan, "train.py", "fabric")
    assert ex.engine_error(plan, "accelerate") and ex.engine_error(plan, "slurm") is None


def test_accelerate_engine_commands_and_refusals():
    plan = _plan(ACCELERATE)
    one, many = ex.commands(plan, "train.py", "accelerate").splitlines()[1::2]
    assert one == "accelerate launch --multi_gpu --num_processes 2 train.py --cpu"  # Accelerator(cpu=True) in the notebook
    assert many == ("accelerate launch --multi_gpu --num_machines 2 --num_processes 4 --machine_rank $MACHINE_RANK "
                    "--main_process_ip $MAIN_IP --main_process_port 29500 train.py --cpu")
    assert "torchrun --standalone --nproc_per_node 2 train.py --cpu\n" in ex.commands(plan, "train.py", "torchrun")
    assert "--engine accelerate" in ex.engine_error(plan, "slurm") and ex.engine_error(plan, "fabric")
    assert ex.engine_error(plan, "torchrun") is None and ex.engine_error(plan, "accelerate") is None
    plan.options[0].default, plan.launch = False, {"num_processes": 1, "mixed_precision": "bf16"}
    text = ex.commands(plan, "train.py", "accelerate")
    assert "add --cpu after the script" in text and "\naccelerate launch --mixed_precision bf16 train.py\n" in text


@pytest.mark.parametrize("notebook, engine", [(TRAINER, "slurm"), (ACCELERATE, "accelerate")], ids=["trainer", "accelerate"])
def test_check_exits_0_when_up_to_date_and_1_when_stale(tmp_path, notebook, engine):
    script = _export(notebook, tmp_path, "--engine", engine)
    assert (tmp_path / "train.sbatch").is_file() == (engine == "slurm")
    args = ("export", notebook, "-o", str(script), "--engine", engine, "--check")
    assert run_cli(*args, cwd=ROOT).returncode == 0
    script.write_text(script.read_text() + "# edited\n")
    r = run_cli(*args, cwd=ROOT)
    assert r.returncode == 1 and b"out of date" in r.stdout
    script.unlink()
    assert run_cli(*args, cwd=ROOT).returncode == 1


def _notebook(tmp_path: Path, *sources: str) -> Path:
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": s} for i, s in enumerate(sources)]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}}, "nbformat": 4, "nbformat_minor": 5}))
    return path


@pytest.mark.parametrize("sources, why", [
    (("import torch\nprint(torch.ones(2))",), "no training found"),
    (("import lightning as L\ntrainer = L.Trainer(devices=2)\ntrainer.fit(model)\nother = L.Trainer(devices=1)\nother.fit(model)",), "2 Trainer/Fabric constructions"),
])
def test_unexportable_notebook_is_one_error_line(tmp_path, sources, why):
    r = run_cli("export", str(_notebook(tmp_path, *sources)), "-o", str(tmp_path / "train.py"))
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error:") and why in err[0], err
    assert not (tmp_path / "train.py").exists()


@pytest.mark.parametrize("notebook, args, why", [
    ("golden/fabric_two_launches/input.ipynb", (), "2 fabric.launch calls"),
    (ACCELERATE_ORIGINAL, (), "(NBR305): `nbrefactor fix --devices N` moves it into a function first"),
    (ACCELERATE, ("--engine", "slurm"), "this notebook trains with Accelerate: use --engine accelerate"),
], ids=["two-fabric-launches", "accelerate-at-top-level", "accelerate-under-slurm"])
def test_refused_export_writes_nothing(notebook, args, why):
    r = run_cli("export", notebook, "-o", "/nonexistent/train.py", *args, cwd=ROOT)
    assert r.returncode == 2 and why in r.stderr.decode(), r.stderr


def test_display_only_code_is_left_out_with_a_comment(tmp_path):
    path = _notebook(
        tmp_path,
        "import lightning as L\nimport matplotlib.pyplot as plt",
        "%matplotlib inline\ntrainer = L.Trainer(devices=2, strategy='ddp_notebook')\ntrainer.fit(model)",
        "fig, ax = plt.subplots()\nax.plot(trainer.callback_metrics['loss'])\nplt.show()",
        "trainer.callback_metrics",
        "!nvidia-smi",
    )
    script = ex.export_notebook(read_notebook(path), "nb.ipynb").script
    assert "# cell 3 left out: it only displays" in script and "# cell 4 left out: it only displays" in script
    assert "# cell 2: left out '%matplotlib inline' (IPython)" in script and "'!nvidia-smi'" in script
    assert "plt" not in script.replace("# ", "").split("import argparse")[1]
    assert 'strategy="ddp"' in script and "devices=args.devices" in script and "accelerator=args.accelerator" in script
    compile(script, "train.py", "exec")


def test_after_fit_what_does_not_use_the_trainer_runs_on_rank_0_alone(tmp_path):
    """After the fork the notebook process alone read the logs and saved the model: in the script
    that is rank 0 (the other ranks would read files rank 0 may not have written yet, or write the
    same file twice); calls that use the Trainer, and what they read, stay on every rank."""
    path = _notebook(
        tmp_path,
        "import lightning as L\nimport torch",
        "trainer = L.Trainer(devices=2, strategy='ddp_notebook')\ntrainer.fit(model)",
        "rows = open(trainer.logger.log_dir + '/metrics.csv').read()\ntorch.save(model.state_dict(), 'model.pt')",
        "best = model.best\ntrainer.test(best)",
    )
    script = ex.export_notebook(read_notebook(path), "nb.ipynb").script
    compile(script, "train.py", "exec")
    main = script.split("def main(args):")[1]
    guarded = main.split("if trainer.global_rank == 0:")[1].split("# cell 4")[0]
    assert "rows = open(trainer.logger.log_dir" in guarded and "torch.save(model.state_dict()" in guarded
    assert "    best = model.best\n    trainer.test(best)" in main.split("# cell 4")[1]  # trainer.test reads `best`: every rank


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_export_reproduces_golden(case, update_goldens):
    meta = json.loads((case / "case.json").read_text())
    result = ex.export_notebook(read_notebook(ROOT / meta["notebook"]), meta["notebook"])
    files = ex.outputs(result, "train.py", meta.get("engine"), meta.get("nodes"))
    for name, text in files.items():
        if update_goldens:
            (case / name).write_text(text, encoding="utf-8")
        assert (case / name).read_text(encoding="utf-8") == text, f"{case.name}/{name}: {meta['about']}"
