"""The Accelerate golden cases, run: the original in one process, the fixed notebook under
`nbrefactor run --accelerator cpu --devices 2`, where `notebook_launcher` forks 2 CPU processes
(gloo) whose ranks the children report. The fixed notebook must pass with 2 ranks and print the
lines the original printed (the Lightning cases run in tests/test_golden.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_launcher import launcher_env, needs_kernel

CASES = sorted(p for p in (ROOT / "golden").iterdir() if (p / "case.json").is_file()
               and json.loads((p / "case.json").read_text()).get("run") == "accelerate")


def _run(nb: Path, devices: int) -> tuple[dict, list[str]]:
    """`nbrefactor run NB --accelerator cpu --devices N -o executed`; (report, stdout lines)."""
    executed, report = nb.with_name(nb.stem + ".out.ipynb"), nb.with_name(nb.stem + ".report.json")
    r = subprocess.run(
        [sys.executable, "-m", "nbrefactor.launcher", str(nb), "--accelerator", "cpu", "--devices", str(devices),
         "-o", str(executed), "--report", str(report)],
        cwd=nb.parent, env=launcher_env(nb.parent, False), capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = "".join(
        "".join(out.get("text", ""))
        for cell in json.loads(executed.read_text())["cells"] for out in cell.get("outputs", [])
        if out.get("output_type") == "stream" and out.get("name") == "stdout"
    )
    # A forked process's lines reach the kernel one connection each, in any order (see tests/kernel.py).
    # `notebook_launcher` announces itself ("Launching training on CPU." / "on 2 CUDAs."): not the notebook's.
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    return json.loads(report.read_text()), sorted(line for line in lines if not line.startswith("Launching training on"))


@needs_kernel
@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_fixed_accelerate_notebook_forks_two_ranks_and_prints_what_the_original_printed(case, tmp_path):
    pytest.importorskip("accelerate")
    for side, source in (("original", "input.ipynb"), ("fixed", "expected.ipynb")):
        (tmp_path / side).mkdir()
        shutil.copy(case / source, tmp_path / side / "nb.ipynb")
    original_report, original = _run(tmp_path / "original" / "nb.ipynb", devices=1)
    fixed_report, fixed = _run(tmp_path / "fixed" / "nb.ipynb", devices=2)
    assert original_report["ranks"] <= 1
    assert fixed_report["ranks"] == 2, fixed_report["launches"]
    assert [launch["ranks"] for launch in fixed_report["launches"]] and all(
        sorted(r["rank"] for r in launch["ranks"]) == [0, 1] for launch in fixed_report["launches"])
    assert original, "the case prints nothing to compare"
    assert fixed == original
