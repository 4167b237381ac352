"""`nbrefactor export`: a notebook, as `fix` leaves it, written as a training script for torchrun,
`fabric run`, SLURM's `srun` (and plain `python`), with the launch commands for each engine."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from codemods.export_script import ExportError, Plan, export_script
from nbrefactor.errors import NotebookError

ENGINES = ("torchrun", "fabric", "slurm")
KINDS = {"trainer.fit": "trainer", "fabric.launch": "fabric"}


@dataclass
class Export:
    script: str
    plan: Plan


def export_notebook(notebook, name: str) -> Export:
    """The script for a read notebook; `name` is how the header names it."""
    from nbrefactor.checker import check_notebook
    from nbrefactor.config import Selection
    from nbrefactor.fixer import fix_notebook

    result = fix_notebook(notebook)
    fixed = result.after or notebook
    facts = check_notebook(fixed, Selection()).facts
    kind, start = _kind(facts, fixed, name)
    origin = [c.number for c in notebook.cells if c.number not in set(result.deleted_cells)]
    cells = [(origin[c.index], c.source) for c in fixed.code_cells]
    try:
        script, plan = export_script(name, cells, kind, start=origin[start] if start is not None else None)
    except ExportError as err:
        raise NotebookError(name, f"cannot export: {err}") from None
    return Export(script, plan)


def _kind(facts, fixed, name: str) -> tuple[str, int | None]:
    """("trainer" | "fabric", index of the first launch's cell)."""
    launches = facts.launches if facts is not None else []
    accelerate = facts is not None and (facts.accelerate_states or facts.accelerate_training)
    if accelerate or any(lp.kind == "notebook_launcher" for lp in launches):
        raise NotebookError(name, "cannot export: Accelerate notebooks (notebook_launcher) are not exported yet")
    if not launches:
        raise NotebookError(name, "cannot export: no training found (no trainer.fit, fabric.launch or notebook_launcher)")
    kinds = {"fabric" if lp.kind.startswith("fabric") else "trainer" for lp in launches}
    if len(kinds) > 1:
        raise NotebookError(name, "cannot export: the notebook trains with both a Trainer and Fabric")
    fabric = [lp for lp in launches if lp.kind.startswith("fabric")]
    if len(fabric) > 1:
        raise NotebookError(name, f"cannot export: {len(fabric)} fabric.launch calls; export handles one")
    statement = facts.statements[min(lp.statement for lp in launches)]
    return kinds.pop(), statement.cell


# --- launch commands -----------------------------------------------------------------------------


def _count(plan: Plan, name: str, fallback: int) -> int:
    value = plan.default(name)
    return value if isinstance(value, int) and value > 0 else fallback


def commands(plan: Plan, script: str, engine: str, nodes: int | None = None) -> str:
    """What to type to launch the script with `engine` (one node, then several)."""
    n = _count(plan, "devices", 1)
    m = nodes or max(_count(plan, "num_nodes", 1), 2)
    accel = plan.default("accelerator", "auto")
    s = shlex.quote(script)
    if engine == "torchrun":
        return (
            f"# one machine, {n} processes:\n"
            f"torchrun --standalone --nproc_per_node {n} {s} --accelerator {accel} --devices {n}\n"
            f"# {m} machines, {n} processes each (run on every machine, NODE_RANK = 0..{m - 1}; MASTER_ADDR is machine 0):\n"
            f"torchrun --nnodes {m} --node_rank $NODE_RANK --nproc_per_node {n} --master_addr $MASTER_ADDR --master_port 29500 "
            f"{s} --accelerator {accel} --devices {n} --num-nodes {m}\n"
        )
    if engine == "fabric":
        return (
            f"# one machine, {n} processes:\n"
            f"fabric run --accelerator {accel} --devices {n} {s} --accelerator {accel} --devices {n}\n"
            f"# {m} machines (run on every machine, NODE_RANK = 0..{m - 1}):\n"
            f"fabric run --accelerator {accel} --devices {n} --num-nodes {m} --node-rank $NODE_RANK --main-address $MASTER_ADDR "
            f"--main-port 29500 {s} --accelerator {accel} --devices {n} --num-nodes {m}\n"
        )
    sbatch = str(Path(script).with_suffix(".sbatch"))
    return f"# {m} nodes, {n} tasks (one per device) on each:\nsbatch {shlex.quote(sbatch)}\n"


def sbatch(plan: Plan, script: str, nodes: int | None = None) -> str:
    """A SLURM batch file as Lightning's "Run on an on-prem cluster" page writes it: one task per
    device, `srun` starting them, the script told the same counts."""
    n = _count(plan, "devices", 1)
    m = nodes or _count(plan, "num_nodes", 1)
    accel = plan.default("accelerator", "auto")
    gpus = accel not in ("cpu", "mps", "tpu")
    lines = [
        "#!/bin/bash -l",
        f"# Written by `nbrefactor export --engine slurm` for {Path(script).name}.",
        f"#SBATCH --nodes={m}",
        f"#SBATCH --ntasks-per-node={n}",
        *([f"#SBATCH --gpus-per-node={n}"] if gpus else []),
        "#SBATCH --time=0-02:00:00",
        "",
        "# activate your environment here",
        f"srun python {shlex.quote(Path(script).name)} --accelerator {'gpu' if gpus and accel == 'auto' else accel} --devices {n} --num-nodes {m}",
    ]
    return "\n".join(lines) + "\n"


def outputs(export: Export, script: str, engine: str | None, nodes: int | None) -> dict[str, str]:
    """path -> text of every file export writes."""
    files = {script: export.script}
    if engine == "slurm":
        files[str(Path(script).with_suffix(".sbatch"))] = sbatch(export.plan, script, nodes)
    return files


def stale(files: dict[str, str]) -> list[str]:
    """The files whose content on disk differs from what export would write (or that are missing)."""
    out = []
    for path, text in files.items():
        try:
            same = Path(path).read_text(encoding="utf-8") == text
        except OSError:
            same = False
        if not same:
            out.append(path)
    return out
