"""Run the gauntlet's cases: real corpus notebooks, original and fixed, forked on 2 CPU processes.

A case is a folder `tests/gauntlet/<case>/` with a `case.json`:

    {
      "notebook": "Lightning-AI__tutorials/....py",   # path under ../shared/corpus
      "about": "one line: what this notebook exercises",
      "fix_options": ["--unsafe-fixes"],               # passed to `nbrefactor run --compare`
      "fix": "changed" | "unchanged" | "error",        # what the fix does to it
      "original": "pass" | "fail at cell N: Exception [NBRxxx]",
      "fixed": "...",                                   # the outcome that is right
      "observed": {"fixed": "..."},                     # only with xfail_reason: what differs today
      "xfail_reason": "the fixer bug that makes today's outcome differ",
      "note": "...",                                    # optional: anything a reader should know
      "env": {"NAME": "value"},                         # optional, for the kernel
      "seconds": 90                                     # optional: about how long the case takes
    }                                                   #   (both sides); the longest start first

Every other file in the case folder is copied next to the notebook (the kernel's working directory,
which IPython puts on `sys.path`): per-notebook stand-ins such as helper modules or IPython
extensions. `_standins/` (torchvision, seaborn, pandas, tabulate, and a `sitecustomize` that makes
downloads fail like a missing file) reaches both the `nbrefactor run` process and the kernel it
starts through PYTHONPATH. The notebook is copied into a scratch folder: ../shared is never written.

Every case runs by default and the whole gauntlet must stay quick on 2 CPU cores (a few minutes):
the stand-in datasets hold a few hundred items, `random_split` sizes written for the real ones are
rescaled (sitecustomize), the stand-in ResNet is a cheap one, and `nbrefactor run` smoke-tests each
Trainer. A notebook that stays slow after that is replaced by another corpus notebook, not skipped.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
STANDINS = HERE / "_standins"
RUN_TIMEOUT = 300  # seconds for each side of one notebook (`nbrefactor run --timeout`)


@dataclass
class Case:
    name: str
    folder: Path
    spec: dict

    @property
    def notebook(self) -> Path:
        return CORPUS / self.spec["notebook"]

    @property
    def fix_options(self) -> list[str]:
        return list(self.spec.get("fix_options", []))


@dataclass
class Outcome:
    case: str
    seconds: float
    exit_code: int
    fix: str  # changed, unchanged, error
    original: str | None = None
    fixed: str | None = None
    fix_changes: list[str] = field(default_factory=list)
    fix_refused: list[str] = field(default_factory=list)
    original_cell: int | None = None  # where each side failed, in the original's numbering
    fixed_cell: int | None = None
    original_exception: str | None = None
    fixed_exception: str | None = None
    stderr: str = ""
    stdout: str = ""


def as_dict(out: Outcome) -> dict:
    from dataclasses import asdict

    data = asdict(out)
    data["stdout"], data["stderr"] = out.stdout[-4000:], out.stderr[-2000:]
    return data


def load_cases() -> list[Case]:
    cases = []
    for spec_file in sorted(HERE.glob("*/case.json")):
        cases.append(Case(spec_file.parent.name, spec_file.parent, json.loads(spec_file.read_text(encoding="utf-8"))))
    return cases


def describe(side: dict) -> str:
    """One side's verdict as case.json writes it: `pass` or `fail at cell N: Exception [NBRxxx]`."""
    if side["verdict"] == "pass":
        return "pass"
    failure = side.get("failure") or {}
    cell = failure.get("running_cell") or failure.get("cell")
    what = failure.get("exception") or side.get("outcome") or "failed"
    rule = (failure.get("rule") or {}).get("code")
    return f"fail at cell {cell}: {what}" + (f" {rule}" if rule else "")


def _failed_cell(side: dict) -> int | None:
    failure = side.get("failure") or {}
    return failure.get("running_cell") or failure.get("cell")


def _sources(path: Path) -> list[str]:
    """Cell sources in the order `nbrefactor run` numbers them."""
    import jupytext
    import nbformat

    if path.suffix == ".ipynb":
        node = nbformat.read(str(path), as_version=4)
    else:
        node = jupytext.read(str(path))
    return [c.source for c in node.cells]


def map_cell(original: list[str], fixed: list[str], number: int) -> int:
    """The fixed copy's cell `number` (1-based) in the original's numbering: unchanged cells map to
    themselves; a changed or added cell maps to the original cell it stands in for."""
    j = number - 1
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, original, fixed, autojunk=False).get_opcodes():
        if j1 <= j < j2 or (j1 == j2 == j):
            if tag == "equal":
                return i1 + (j - j1) + 1
            return i1 + min(j - j1, max(i2 - i1 - 1, 0)) + 1
    return len(original)


def run_case(case: Case, workdir: Path) -> Outcome:
    """Copy the notebook and the case's stand-ins into `workdir`/run, run `nbrefactor run --compare`.
    (One level down: some notebooks keep data and checkpoints in `../data`, `../saved_models`.)"""
    workdir = workdir / "run"
    workdir.mkdir(parents=True, exist_ok=True)
    nb = workdir / case.notebook.name
    shutil.copyfile(case.notebook, nb)  # copyfile: the corpus is read-only, the copy must not be
    for extra in case.folder.iterdir():
        if extra.name in ("case.json", "__pycache__"):
            continue
        (shutil.copytree if extra.is_dir() else shutil.copyfile)(extra, workdir / extra.name)
    report = workdir / "report.json"
    executed = workdir / "fixed-executed.ipynb"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(STANDINS), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("MPLBACKEND", "Agg")
    # Two cases at a time, each two kernels forking two ranks: eight processes on 2 cores. One
    # OpenMP thread each instead of one per core, or they spend the run preempting each other.
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PATH_DATASETS"] = str(workdir / "data")
    env.update(case.spec.get("env", {}))
    cmd = [sys.executable, "-m", "nbrefactor", "run", str(nb), "--accelerator", "cpu", "--devices", "2", "--compare",
           "--timeout", str(RUN_TIMEOUT), "--report", str(report), "-o", str(executed), *case.fix_options]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=3 * RUN_TIMEOUT)
    out = Outcome(case.name, round(time.monotonic() - start, 1), proc.returncode, "error", stdout=proc.stdout, stderr=proc.stderr)
    if not report.exists():  # the fix itself failed (exit 2, one `error:` line)
        return out
    data = json.loads(report.read_text(encoding="utf-8"))
    original, fixed = data["original"], data["fixed"]
    out.fix = "changed" if fixed["fix"]["changed"] else "unchanged"
    out.fix_changes = [f"cell {c['cell']}: {c['code']} {c['message']}" for c in fixed["fix"]["changes"]]
    out.fix_refused = list(fixed["fix"]["refused"])
    out.original, out.fixed = describe(original), describe(fixed)
    out.original_exception = (original.get("failure") or {}).get("exception")
    out.fixed_exception = (fixed.get("failure") or {}).get("exception")
    out.original_cell = _failed_cell(original)
    cell = _failed_cell(fixed)
    if cell is not None and executed.exists():
        out.fixed_cell = map_cell(_sources(nb), _sources(executed), cell)
    else:
        out.fixed_cell = cell
    return out


def run_all(cases: list[Case], root: Path, jobs: int = 2) -> dict[str, Outcome]:
    """Run the cases `jobs` at a time (each is one `nbrefactor run --compare`: two kernels, each
    forking its ranks), the longest first (case.json's `seconds`) so that the last to start are short."""
    order = sorted(cases, key=lambda c: -float(c.spec.get("seconds", 60)))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {c.name: pool.submit(run_case, c, root / c.name) for c in order}
        return {c.name: futures[c.name].result() for c in cases}


def regressions(out: Outcome) -> list[str]:
    """What the fixed copy did worse than the original, whatever case.json expects: passing less,
    failing in an earlier cell, or failing in the same cell with another error (a later cell may
    fail on something else: the fix got the notebook further)."""
    problems = []
    if out.original == "pass" and out.fixed != "pass":
        problems.append(f"the original passes, the fixed copy does not: {out.fixed}")
    elif out.fixed not in (None, "pass") and out.original != "pass":
        if out.fixed_cell is not None and out.original_cell is not None and out.fixed_cell < out.original_cell:
            problems.append(f"the fixed copy fails earlier (original's cell {out.fixed_cell}) than the original (cell {out.original_cell})")
        if out.fixed_cell == out.original_cell and out.fixed_exception != out.original_exception:
            problems.append(f"the fixed copy raises {out.fixed_exception}, the original {out.original_exception}")
    return problems
