"""Golden cases: `golden/<case>/input.ipynb` fixed must equal `expected.ipynb` (`--update-goldens`
rewrites them), and every case holds DESIGN.md's invariants. Runnable cases are run in a real
kernel: the original in one process, the fixed notebook forked on 2 CPU processes, and they must
print the same thing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nbrefactor.fixer import fix_notebook
from nbrefactor.notebook.model import read_notebook
from tests.conftest import ROOT
from tests.invariants import assert_fix_invariants
from tests.kernel import one_process, run_notebook, single_process_env

CASES = sorted(p for p in (ROOT / "golden").iterdir() if (p / "case.json").is_file())


def _case(path: Path):
    meta = json.loads((path / "case.json").read_text())
    args = meta.get("args", [])
    devices = int(args[args.index("--devices") + 1]) if "--devices" in args else None
    return meta, {"unsafe_fixes": "--unsafe-fixes" in args, "devices": devices}


def _fix(path: Path, options: dict):
    return fix_notebook(read_notebook(path), **options)


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_fix_matches_expected(case, update_goldens):
    meta, options = _case(case)
    result = _fix(case / "input.ipynb", options)
    expected = case / "expected.ipynb"
    if update_goldens:
        expected.write_text(result.fixed, encoding="utf-8")
    assert expected.exists(), f"{case.name}: run pytest --update-goldens to create expected.ipynb"
    assert result.fixed == expected.read_text(encoding="utf-8"), f"{case.name}: {meta['about']}"


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_invariants(case):
    meta, options = _case(case)
    original = (case / "input.ipynb").read_text()
    assert_fix_invariants(original, _fix(case / "input.ipynb", options), **options)


def _printed(lines: list[str]) -> list[str]:
    return sorted(" ".join(line.split()) for line in lines)


RUNNABLE = [c for c in CASES if _case(c)[0].get("runnable")]


@pytest.mark.parametrize("case", RUNNABLE, ids=lambda p: p.name)
def test_fixed_notebook_runs_forked_and_prints_what_the_original_printed(case, tmp_path):
    for side in ("original", "fixed"):
        (tmp_path / side).mkdir()
        for module in case.glob("*.py"):  # a LightningModule the notebook imports
            shutil.copy(module, tmp_path / side / module.name)
    original_nb = tmp_path / "original" / "input.ipynb"
    original_nb.write_text(json.dumps(one_process(json.loads((case / "input.ipynb").read_text()))))
    original, original_err = run_notebook(original_nb, tmp_path / "original", env=single_process_env())
    fixed, fixed_err = run_notebook(case / "expected.ipynb", tmp_path / "fixed")
    assert "MEMBER: 2/2" in fixed_err and "GLOBAL_RANK: 1" in fixed_err, "the fixed notebook did not fork 2 processes"
    assert "MEMBER: 2/2" not in original_err
    # The kernel writes each line whole (tests/kernel.py), but a forked process's lines reach it over
    # one connection each and can arrive out of order: compare the lines printed, not their order.
    assert _printed(fixed) == _printed(original), (fixed, original)
    assert original, "the case prints nothing to compare"
