"""`nbrefactor export`: a notebook, as `fix` leaves it, written as a training script for torchrun,
`fabric run`, SLURM's `srun`, `accelerate launch` (and plain `python`), with the launch commands for
each engine."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from codemods.export_script import ExportError, Plan, export_script
from nbrefactor.errors import NotebookError

ENGINES = ("torchrun", "fabric", "accelerate", "slurm")
ENGINE_KINDS = {"fabric": ("trainer", "fabric"), "slurm": ("trainer", "fabric"), "accelerate": ("accelerate",)}  # torchrun: all
KINDS = {"trainer.fit": "trainer", "fabric.launch": "fabric"}


@dataclass
class Export:
    script: str
    plan: Plan
    cells: dict[int, str] = field(default_factory=dict)  # the exported cells' sources, by number in the notebook
    changed: set[int] = field(default_factory=set)  # the numbers of the cells `fix` changed


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
    before = {c.number: c.source for c in notebook.cells}
    return Export(script, plan, dict(cells), {n for n, source in cells if before.get(n) != source})


def _kind(facts, fixed, name: str) -> tuple[str, int | None]:
    """("trainer" | "fabric" | "accelerate", index of the first launch's cell)."""
    launches = facts.launches if facts is not None else []
    accelerate = [lp for lp in launches if lp.kind == "notebook_launcher"]
    if accelerate:
        return _accelerate(accelerate, facts, name)
    if facts is not None and facts.accelerate_training:
        raise NotebookError(name, "cannot export: the Accelerate training runs at top level, with no notebook_launcher "
                                  "(NBR305): `nbrefactor fix --devices N` moves it into a function first")
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


def _accelerate(launches, facts, name: str) -> tuple[str, int]:
    if len(launches) > 1:
        raise NotebookError(name, f"cannot export: {len(launches)} notebook_launcher calls; export handles one")
    if launches[0].via is not None:
        raise NotebookError(name, f"cannot export: notebook_launcher runs inside {launches[0].via}(); export needs it at top level")
    if len(facts.launches) > 1:
        raise NotebookError(name, "cannot export: the notebook trains with Accelerate and with a Trainer or Fabric")
    return "accelerate", facts.statements[launches[0].statement].cell


def engine_error(plan: Plan, engine: str | None) -> str | None:
    """Why `engine` does not launch this script, or None."""
    if engine not in ENGINE_KINDS or plan.kind in ENGINE_KINDS[engine]:
        return None
    if plan.kind == "accelerate":
        return f"--engine {engine} launches Lightning scripts; this notebook trains with Accelerate: use --engine accelerate (or torchrun)"
    return f"--engine accelerate launches Accelerate scripts; this notebook trains with a {plan.kind.capitalize()}: use --engine torchrun"


# --- launch commands -----------------------------------------------------------------------------


def _count(plan: Plan, name: str, fallback: int) -> int:
    value = plan.default(name)
    return value if isinstance(value, int) and value > 0 else fallback


def _processes(plan: Plan) -> tuple[int, int]:
    """(processes per machine, machines) the notebook asks for."""
    if plan.kind == "accelerate":
        n, m = plan.launch.get("num_processes"), plan.launch.get("num_nodes")
        return (n if isinstance(n, int) and n > 0 else 1), (m if isinstance(m, int) and m > 0 else 1)
    return _count(plan, "devices", 1), _count(plan, "num_nodes", 1)


def _script_args(plan: Plan, n: int, m: int | None = None) -> str:
    """The script's own options for n processes a machine (on m machines)."""
    if plan.kind == "accelerate":
        return " --cpu" if plan.default("cpu") else ""
    accel = plan.default("accelerator", "auto")
    return f" --accelerator {accel} --devices {n}" + (f" --num-nodes {m}" if m else "")


def commands(plan: Plan, script: str, engine: str, nodes: int | None = None) -> str:
    """What to type to launch the script with `engine` (one node, then several)."""
    n, notebook_nodes = _processes(plan)
    m = nodes or max(notebook_nodes, 2)
    accel = plan.default("accelerator", "auto")
    s = shlex.quote(script)
    if engine == "accelerate":
        return accelerate_commands(plan, s, n, m)
    if engine == "torchrun":
        return (
            f"# one machine, {n} processes:\n"
            f"torchrun --standalone --nproc_per_node {n} {s}{_script_args(plan, n)}\n"
            f"# {m} machines, {n} processes each (run on every machine, NODE_RANK = 0..{m - 1}; MASTER_ADDR is machine 0):\n"
            f"torchrun --nnodes {m} --node_rank $NODE_RANK --nproc_per_node {n} --master_addr $MASTER_ADDR --master_port 29500 "
            f"{s}{_script_args(plan, n, m)}\n"
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


def accelerate_commands(plan: Plan, s: str, n: int, m: int) -> str:
    """`accelerate launch` for one machine and for m: --multi_gpu picks its torchrun launcher (its
    --cpu would start one process); the script's --cpu keeps those processes on the CPU."""
    precision = plan.launch.get("mixed_precision")
    flags = f" --mixed_precision {precision}" if precision not in (None, "no") else ""
    args = _script_args(plan, n)
    cpu = "" if args else " (add --cpu after the script to train on CPUs: a machine without GPUs needs it)"
    one = f"accelerate launch --multi_gpu{flags} --num_processes {n}" if n > 1 else f"accelerate launch{flags}"
    return (
        f"# one machine, {n} process{'es' if n > 1 else ''}{cpu}:\n"
        f"{one} {s}{args}\n"
        f"# {m} machines, {n} process{'es' if n > 1 else ''} each (run on every machine, MACHINE_RANK = 0..{m - 1}; MAIN_IP is machine 0's address):\n"
        f"accelerate launch --multi_gpu{flags} --num_machines {m} --num_processes {n * m} --machine_rank $MACHINE_RANK "
        f"--main_process_ip $MAIN_IP --main_process_port 29500 {s}{args}\n"
    )


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


# --- the pre-commit hook: scripts kept in step with their notebooks ------------------------------


@dataclass(frozen=True)
class Target:
    """A notebook and the script it is exported to (paths as the hook names files: from the root)."""

    notebook: str
    script: str
    engine: str | None = None
    nodes: int | None = None

    def files(self) -> list[str]:
        """The files export writes for it, and the notebook: a change to any of them runs it."""
        return [self.notebook, self.script, *([str(Path(self.script).with_suffix(".sbatch"))] if self.engine == "slurm" else [])]


def _entry(notebook: str, value, base: Path, root: Path, where: str) -> Target:
    """One `export` entry: "script.py", or {script = "script.py", engine = "slurm", nodes = 2}."""
    value = {"script": value} if isinstance(value, str) else value
    if not isinstance(value, dict) or not isinstance(value.get("script"), str) or set(value) - {"script", "engine", "nodes"}:
        raise NotebookError(where, f'export entry for {notebook!r} must be a script path or {{script = "...", engine = "...", nodes = N}}')
    engine, nodes = value.get("engine"), value.get("nodes")
    if engine is not None and engine not in ENGINES:
        raise NotebookError(where, f"export entry for {notebook!r}: engine must be one of {', '.join(ENGINES)}")
    if nodes is not None and (not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1):
        raise NotebookError(where, f"export entry for {notebook!r}: nodes must be a whole number of machines, 1 or more")
    script = (base / value["script"]).resolve()
    if not script.is_relative_to(root):
        raise NotebookError(where, f"export entry for {notebook!r}: {value['script']} is outside the repository ({root}); nothing is written there")
    return Target(os.path.relpath((base / notebook).resolve(), root), os.path.relpath(script, root), engine, nodes)


def targets(table: dict, source: Path | None, maps: tuple[str, ...], engine: str | None, nodes: int | None, root: Path) -> list[Target]:
    """The notebook -> script entries of `[tool.nbrefactor] export` (paths from the pyproject.toml's
    folder) and of `--map NOTEBOOK=SCRIPT` (paths from the root); --engine/--nodes apply to entries
    that do not set their own."""
    root = root.resolve()
    found = [_entry(nb, value, source.parent, root, str(source)) for nb, value in table.items()] if source else []
    for pair in maps:
        notebook, sep, script = pair.partition("=")
        if not sep or not notebook or not script:
            raise NotebookError("--map", f"{pair!r} is not NOTEBOOK=SCRIPT")
        found.append(_entry(notebook, script, root, root, "--map"))
    return [Target(t.notebook, t.script, t.engine or engine, t.nodes or nodes) for t in found]


def touched(found: list[Target], files: list[str], root: Path) -> list[Target]:
    """The entries whose notebook or written files are among `files` (what pre-commit passes)."""
    named = {Path(f).resolve() for f in files}
    return [t for t in found if any((root / f).resolve() in named for f in t.files())]
