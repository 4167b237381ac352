"""`nbrefactor export --engine slurm` on a real one-node SLURM cluster (tests/slurm.py): the
exported train.sbatch, submitted with `sbatch --wait`, runs the Trainer script as 2 tasks under
`srun` (Lightning's SLURMEnvironment), both ranks join, and it prints what the notebook printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nbrefactor.launcher.processes import free_port
from tests import slurm
from tests.test_export import ENV, TRAINER, _export, _lines, _one_process_prints

JOB_TIMEOUT_S = 420
ACTIVATE = "# activate your environment here"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with slurm.cluster(tmp_path_factory.mktemp("slurm")) as c:
        yield c


def _activate(sbatch: Path) -> None:
    """Fill in the line the sbatch file leaves to the user: this Python's bin first on PATH (the
    `bash -l` job shell resets PATH from /etc/profile)."""
    text = sbatch.read_text()
    assert ACTIVATE in text, text
    sbatch.write_text(text.replace(ACTIVATE, f'export PATH="{Path(sys.executable).parent}:$PATH"'))


def _submit(cluster: slurm.Cluster, sbatch: Path) -> subprocess.CompletedProcess:
    folder = sbatch.parent
    cmd = ["sbatch", "--wait", f"--output={folder / 'job.out'}", f"--error={folder / 'job.err'}", sbatch.name]
    env = {**ENV, "SLURM_CONF": str(cluster.conf), "MASTER_PORT": str(free_port())}
    return subprocess.run(cmd, check=False, cwd=folder, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)


def test_trainer_export_runs_as_two_tasks_on_a_slurm_cluster(cluster, tmp_path):
    script = _export(TRAINER, tmp_path, "--engine", "slurm", "--nodes", "1")
    sbatch = script.with_suffix(".sbatch")
    assert "#SBATCH --ntasks-per-node=2" in sbatch.read_text()
    assert "--accelerator cpu --devices 2 --num-nodes 1" in sbatch.read_text()
    _activate(sbatch)
    r = _submit(cluster, sbatch)
    err = (tmp_path / "job.err").read_text() if (tmp_path / "job.err").is_file() else ""
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{err[-3000:]}"
    out = (tmp_path / "job.out").read_text()
    assert "MEMBER: 1/2" in err and "MEMBER: 2/2" in err, err[-3000:]
    assert _lines(out) == _one_process_prints(TRAINER, tmp_path)
