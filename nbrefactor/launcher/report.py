"""What a run proved: the verdict, per-cell status and time, the ranks the children reported, and on
failure the cell, the line and the rule that explains it; as a dict (the `--report` JSON) and as text.

A failure is placed by the best witness there is, in this order: the tracer (the first cell and line
that touched CUDA, for failures that come from CUDA in the notebook process), the forked child's own
traceback (the line in the training function), the notebook process's traceback, the running cell.
The rule comes from the error text (Lightning's and torch's messages, research-lightning.md 2.5) or
from the fork probe; the static check's findings for that rule are shown beside it. Without a rule,
only findings that could have caused the failure are offered as explaining it (`related_findings`):
in the failing cell, or of a rule family about this kind of failure; an NBR5xx finding in a cell
that failed after a launch explains it outright. The other findings follow, said to be unrelated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nbrefactor.launcher.runner import RunResult, RunSettings

SCHEMA = 1


@dataclass(frozen=True)
class Known:
    """An error text the launcher recognises, the rule that explains it, and what to do."""

    pattern: str
    code: str | None
    hint: str
    cuda: bool = False  # placed by the tracer (where CUDA was first touched), not where it failed
    traced: str | None = None  # placed where the tracer saw this event first (`accelerator`: the first Accelerator())


KNOWN: tuple[Known, ...] = (
    Known(
        r"Cannot re-initialize CUDA in forked subprocess|Lightning can't create new processes if CUDA is already initialized"
        r"|Unable to handle autograd's threading in combination with fork-based multiprocessing"
        r"|CUDA has been initialized before the `notebook_launcher` could create a forked subprocess",
        "NBR101",
        "CUDA was used in the notebook process before the launch point, so the forked processes cannot use it; "
        "move that code into the training function (or a hook) and restart the kernel",
        cuda=True,
    ),
    Known(
        r"Torch not compiled with CUDA enabled|Found no NVIDIA driver|No CUDA GPUs are available",
        "NBR101",
        "the notebook process uses CUDA, and this machine has none; on a GPU machine the same line would keep "
        "the forked processes from using CUDA",
        cuda=True,
    ),
    Known(
        r"the `Accelerator` should only be initialized inside your training function",
        "NBR103",
        "an `Accelerator` was created in the notebook process before `notebook_launcher`; create it inside the "
        "launched function (first thing there), remove the one outside and restart the kernel",
        traced="accelerator",
    ),
    Known(
        r"Libraries known to initialize device upon import have been imported already",
        "NBR104",
        "a library that initialises the GPU when imported (`bitsandbytes`) was imported in the notebook process; "
        "import it inside the training function and restart the kernel",
    ),
    Known(
        r"You have to specify the number of devices you would like to use",
        "NBR403",
        "current Accelerate needs `num_processes=` in `notebook_launcher(...)`: pass the number of GPUs",
    ),
    Known(
        r"needs to be called with a function|needs to be a callable",
        "NBR301",
        "put the training code into `def train(fabric): ...` and call `fabric.launch(train)`",
    ),
    Known(
        r"is not compatible with an interactive environment",
        "NBR401",
        "this strategy starts processes by re-running a script, which a notebook is not; use a fork strategy "
        "(`ddp_notebook`)",
    ),
    Known(
        r"you must call `\.launch\(\)` or use the CLI|Default process group has not been initialized",
        "NBR302",
        "with several devices every Fabric call must run inside the launched function",
    ),
    Known(
        r"terminated with signal SIG(SEGV|ABRT|BUS)",
        "NBR201",
        "a forked process crashed; data or thread pools built in the notebook process before the fork are the "
        "usual cause: build them inside the training function or the `*_dataloader` hooks",
    ),
    Known(
        r"Invalid thread pool",
        None,
        "the OpenMP thread pool did not survive the fork; set OMP_NUM_THREADS before starting Jupyter",
    ),
    Known(
        r"resource_sharer|Client\(address\)",
        None,
        "tensors returned by the launched function cannot reach the notebook once the processes have exited; "
        "return plain numbers or lists (`.tolist()`), or save to disk and return the path",
    ),
    Known(r"Calling `trainer\.fit\(\)` twice", "NBR303", "create a new Trainer for each `fit` (pass `ckpt_path=` to resume)"),
    Known(
        r"`return_predictions` should be set to `False`",
        None,
        "`predict` returns nothing from forked processes: write predictions with a `BasePredictionWriter`",
    ),
    Known(r"needs to take at least one argument", None, "the launched function receives the Fabric object: `def train(fabric):`"),
    Known(r"You requested gpu|requested .* devices? .* but", None, "`--devices` asks for more devices than this machine has"),
)

RULE_FAMILY = {"NBR101": ("NBR101", "NBR102")}


def _rule(code: str | None) -> dict | None:
    if code is None:
        return None
    from codemods.rules import RULES_BY_CODE

    rule = RULES_BY_CODE.get(code)
    if rule is None:
        return {"code": code, "name": None, "summary": None}
    return {"code": rule.code, "name": rule.name, "summary": rule.summary}


def finding_dict(d) -> dict:
    return {
        "code": d.code,
        "name": d.name,
        "message": d.message,
        "cell": d.cell,
        "location": {"row": d.row, "column": d.column},
        "fix": d.applicability,
        "text": f"{d.path}:cell {d.cell}:{d.row}:{d.column}: {d.code} {d.message}",
    }


def build(result: RunResult, *, path: str, settings: RunSettings, findings=None, static_error: str | None = None) -> dict:
    """The report as a dict (the `--report` JSON)."""
    events = result.events
    launches = _launches(events, result.ranks)
    cuda = {e["kind"]: _place(e) for e in events if e.get("event") == "cuda"}
    accelerator = next((_place(e) for e in events if e.get("event") == "accelerator"), None)
    target = next((e for e in events if e.get("event") == "target"), None)
    overrides = [
        {"kind": e["kind"], "cell": e.get("cell"), "line": e.get("line"), "changed": e.get("changed", {})}
        for e in events
        if e.get("event") == "override" and e.get("changed")
    ]
    warnings = [e["message"] for e in events if e.get("event") == "warning"]
    all_ranks_done = all(lau["ranks_done"] == lau["processes"] for lau in launches)
    if result.outcome == "interrupted":
        verdict = "interrupted"
    elif result.outcome == "completed" and all_ranks_done:
        verdict = "pass"
    else:
        verdict = "fail"
    findings = list(findings or [])
    failure = None
    if verdict == "fail":
        failure = _failure(result, launches, cuda, findings, {"accelerator": accelerator})
    if not launches and result.outcome == "completed":
        warnings.append("no launch point ran (no `trainer.fit`, `fabric.launch`...): nothing was forked, so this run proves nothing about multi-device training")
    cells = [{"cell": c.number, "type": c.cell_type, "status": c.status, "seconds": _round(c.seconds)} for c in result.cells]
    return {
        "schema": SCHEMA,
        "notebook": path,
        "copy": None,  # "fixed" for the fixed copy that --fix / --compare ran
        "verdict": verdict,
        "outcome": result.outcome,
        "seconds": _round(result.seconds),
        "settings": {
            "accelerator": settings.accelerator,
            "devices": settings.devices,
            "mode": "smoke" if settings.smoke else "full",
            "timeout": settings.timeout,
        },
        "ran_on": {"accelerator": target["accelerator"], "devices": target["devices"], "strategy": _strategy(launches, overrides)} if target else None,
        "ranks": max((lau["ranks_done"] for lau in launches), default=0),
        "launches": launches,
        "cells": cells,
        "cuda": cuda,
        "accelerator": accelerator,  # where the notebook process first made an Accelerator, if it did
        "overrides": overrides,
        "failure": failure,
        "static_findings": [finding_dict(d) for d in findings],
        "static_error": static_error,
        "warnings": warnings,
        "cleanup": {
            "kernel_pid": result.kernel_pid,
            "processes": result.pids,
            "stopped": result.stopped,
            "left_running": result.leftovers,
            "names": {str(p): n for p, n in sorted(result.names.items())},
            "tracking": result.tracking,
            "ports": {str(p): ("listening" if busy else "free") for p, busy in result.ports.items()},
        },
    }


def _strategy(launches: list[dict], overrides: list[dict]) -> str:
    """How the run forks: Accelerate's `notebook_launcher` when it is all the notebook launches with."""
    kinds = {lau["kind"] for lau in launches} | {"accelerate" if o["kind"] == "notebook_launcher" else o["kind"] for o in overrides}
    return "notebook_launcher" if kinds == {"accelerate"} else "ddp_notebook"


def exit_code(report: dict) -> int:
    return {"pass": 0, "fail": 1, "interrupted": 130}[report["verdict"]]


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _place(event: dict) -> dict:
    keys = ("kind", "cell", "line", "code", "function", "called_from", "running_cell", "via", "lightning_imported")
    return {k: event.get(k) for k in keys if k in event}


def _launches(events: list[dict], ranks: list[dict]) -> list[dict]:
    out = []
    ends = {e["launch"]: e for e in events if e.get("event") == "launch_end"}
    for e in events:
        if e.get("event") != "launch":
            continue
        mine = [r for r in ranks if r.get("launch") == e["launch"]]
        end = ends.get(e["launch"])
        out.append(
            {
                "launch": e["launch"],
                "kind": e.get("kind"),
                "cell": e.get("cell"),
                "line": e.get("line"),
                "code": e.get("code"),
                "processes": e.get("processes"),
                "port": e.get("port"),
                "probe": e.get("probe"),
                "status": "stopped by the fork probe" if (e.get("probe") or {}).get("broken") else (end or {}).get("status", "running"),
                "ranks_started": len(mine),
                "ranks_done": sum(r.get("status") in ("returned", "finished") for r in mine),
                "ranks": [
                    {k: r.get(k) for k in ("rank", "pid", "status", "type", "message", "frames", "traceback") if r.get(k) is not None}
                    for r in mine
                ],
            }
        )
    return out


def _failure(result: RunResult, launches: list[dict], cuda: dict, findings: list, traced: dict | None = None) -> dict:
    traced = traced or {}
    failed = next((c for c in result.cells if c.status not in ("ok", "skipped", "not run")), None)
    running_cell = failed.number if failed else None
    error = failed.error if failed and failed.error else None
    parent = _parent_error(result.events, running_cell)
    child = _failed_child(launches)
    # error messages only: IPython's traceback shows library source around each frame, and torch's
    # `_lazy_init` source holds the very texts matched below
    text = "\n".join(x for x in [(error or {}).get("evalue"), (parent or {}).get("message"), (child or {}).get("message")] if x)
    failure: dict = {
        "running_cell": running_cell,
        "status": failed.status if failed else result.outcome,
        "exception": (error or {}).get("ename") or (parent or {}).get("type"),
        "message": (error or {}).get("evalue") or (parent or {}).get("message"),
        "traceback": (parent or {}).get("traceback") or (error or {}).get("traceback"),
        "child": child,
        "cell": running_cell,
        "line": None,
        "code": None,
        "found_by": "the running cell",
        "rule": None,
        "hint": None,
        "matching_findings": [],
    }
    # where: the child's line in the training function, else the notebook process's innermost cell frame
    for frames, who in (((child or {}).get("frames"), "the forked process's traceback"), ((parent or {}).get("frames"), "the notebook's traceback")):
        if frames:
            failure.update(cell=frames[-1]["cell"], line=frames[-1]["line"], code=frames[-1]["code"], found_by=who)
            break
    # why: the fork probe, then the known messages
    probe_launch = next((lau for lau in launches if (lau.get("probe") or {}).get("broken")), None)
    known = None
    if probe_launch is not None:
        known = KNOWN[0]
        failure["found_by"] = "the fork probe"
    else:
        known = next((k for k in KNOWN if re.search(k.pattern, text)), None)
    code = known.code if known else None
    if known is not None:
        failure["hint"] = known.hint
        first = traced.get(known.traced) if known.traced else None
        if first and first.get("cell"):
            failure.update(cell=first["cell"], line=first["line"], code=first.get("code"), found_by="the tracer")
        if known.cuda:
            first = cuda.get("init") or cuda.get("probe")
            if first and first.get("cell") and _in_notebook_process_failure(known, child):
                failure.update(cell=first["cell"], line=first["line"], code=first.get("code"), found_by="the tracer")
                if first.get("called_from"):
                    failure["called_from"] = first["called_from"]
                if first is cuda.get("probe") and not cuda.get("init") and not first.get("lightning_imported"):
                    code = "NBR102"
            elif known is KNOWN[1] and child is not None:
                code = None  # the training function itself asked for CUDA on a machine without it
                failure["hint"] = (
                    "the training function asks for CUDA itself and this machine has no GPU; use `fabric.device` "
                    "(or `self.device`) instead of `\"cuda\"` so the code runs on whatever the launcher chose"
                )
        if code == "NBR201" and not any(d.code.startswith("NBR2") for d in findings):
            code = None
    if result.outcome == "timeout":
        running = [lau for lau in launches if lau["status"] == "running"]
        failure.update(exception="Timeout", message=f"cell {running_cell} was still running at the time limit", rule=None, child=None)
        failure.update(cell=running_cell, line=None, code=None, found_by="the running cell", hint=_timeout_hint(launches))
        if running:
            failure.update(cell=running[-1]["cell"], line=running[-1]["line"], code=running[-1]["code"], found_by="the launch point still running")
        code = None
    elif result.outcome == "kernel died":
        failure.update(exception="DeadKernelError", message=f"the kernel died while running cell {running_cell}", kernel_log=result.kernel_log[-2000:])
    failure["rule"] = _rule(code)
    family = RULE_FAMILY.get(code, (code,)) if code else None
    facts = failure_facts(failure, launches, family=family)
    failure["matching_findings"] = related_findings([finding_dict(d) for d in findings], facts)
    failure["explained_by"] = explaining_finding(failure["matching_findings"], facts)
    return failure


# -- which static findings can explain a failure ----------------------------------------------
#
# A finding is shown beside a failure only when it could have caused it: it is in the failing cell,
# or its rule's family is about this kind of failure (NBR1xx/NBR2xx/NBR4xx: a forked process failed,
# crashed or hung; NBR3xx/NBR4xx: the launch call itself raised; NBR5xx: a cell after a launch read
# state the training processes never handed back). A finding in a cell after the running cell never
# ran, and no rule is about a missing module, a syntax error or a stop asked for.

# no rule is about these: a missing package, a typo, a stop asked for (a NameError only through a
# finding that names the missing name)
UNEXPLAINED = frozenset(
    {"ModuleNotFoundError", "ImportError", "SyntaxError", "IndentationError", "TabError", "KeyboardInterrupt", "NameError", "UnboundLocalError"}
)
# what reading state the training processes never handed back looks like (NBR5xx)
STATE_ERRORS = frozenset(
    {
        "FileNotFoundError", "NotADirectoryError", "OSError", "IndexError", "KeyError", "LookupError", "ValueError",
        "AttributeError", "ZeroDivisionError", "TypeError", "AssertionError", "StopIteration", "RuntimeError",
    }
)
FAMILIES = {
    "in launch": ("NBR1", "NBR2", "NBR4"),  # a forked process failed, crashed or hung
    "launch error": ("NBR3", "NBR4"),  # the launch call raised before any process started
    "after launch": ("NBR5",),  # a cell after a launch that returned
    "notebook": (),  # no launch involved: only the failing cell's own findings
}


@dataclass(frozen=True)
class FailureFacts:
    """What the choice of findings needs to know about a failure."""

    exception: str | None  # the innermost exception's type: the forked process's, else the notebook's
    message: str
    cell: int | None  # where the failure is placed (a traceback's cell, the tracer's...)
    line: int | None
    running_cell: int | None  # the cell that was running; later cells never ran
    stage: str  # a key of FAMILIES
    family: tuple[str, ...] | None = None  # the codes the error text named (KNOWN); then only these


def failure_facts(failure: dict, launches: list[dict], family: tuple[str, ...] | None = None) -> FailureFacts:
    child = failure.get("child")
    return FailureFacts(
        exception=(child or {}).get("exception") or failure.get("exception"),
        message=(child or {}).get("message") or failure.get("message") or "",
        cell=failure.get("cell"),
        line=failure.get("line"),
        running_cell=failure.get("running_cell"),
        stage=_stage(failure, launches),
        family=family,
    )


def _stage(failure: dict, launches: list[dict]) -> str:
    """Where the failure happened with respect to the launches: in one, at one, after one, or none."""
    if failure.get("child"):
        return "in launch"
    cell = failure.get("running_cell")
    if cell is None:  # no cell failed: a launch did not bring all its ranks home
        return "in launch" if any(lau["ranks_done"] < (lau["processes"] or 0) for lau in launches) else "notebook"
    here = [lau for lau in launches if lau["cell"] == cell and lau["status"] != "returned"]
    if here:
        # raised before any process started: the launch call itself; else a process failed, crashed or hung
        return "launch error" if here[-1]["status"] == "raised" and not here[-1]["ranks_started"] else "in launch"
    if any(lau["status"] == "returned" and lau["cell"] is not None and lau["cell"] <= cell for lau in launches):
        return "after launch"
    return "notebook"


def relatedness(finding: dict, facts: FailureFacts) -> int | None:
    """How well a finding (a `finding_dict`) can explain the failure: 0 on the failing line, 1 in the
    failing cell, 2 by its rule's family alone; None when it cannot explain it."""
    cell = finding["cell"]
    if facts.running_cell is not None and cell is not None and cell > facts.running_cell:
        return None  # that cell never ran
    close = _closeness(finding, facts)
    if facts.family is not None:
        return close if finding["code"] in facts.family else None
    if facts.exception in UNEXPLAINED:
        name = _missing_name(facts)
        return close if name and re.search(rf"(?<![\w.]){re.escape(name)}\b", finding["message"]) else None
    if close < 2:
        return close
    if not finding["code"].startswith(FAMILIES[facts.stage]):
        return None
    if facts.stage == "after launch" and facts.exception not in STATE_ERRORS:
        return None
    return close


def related_findings(findings: list[dict], facts: FailureFacts) -> list[dict]:
    """The findings that can explain the failure, the closest first (then in notebook order)."""
    scored = [(score, i) for i, d in enumerate(findings) if (score := relatedness(d, facts)) is not None]
    return [findings[i] for _, i in sorted(scored)]


def explaining_finding(related: list[dict], facts: FailureFacts) -> dict | None:
    """An NBR5xx finding in the failing cell explains a failure after a launch by itself (the error
    text names no rule: reading a stale log dir is a FileNotFoundError like any other)."""
    if facts.family is not None or not related:
        return None
    best = related[0]
    close = _closeness(best, facts)
    if best["code"].startswith("NBR5") and close < 2 and (facts.stage == "after launch" or close == 0):
        return best
    return None


def _closeness(finding: dict, facts: FailureFacts) -> int:
    cell, row = finding["cell"], (finding.get("location") or {}).get("row")
    if cell is not None and cell == facts.cell and facts.line is not None and row == facts.line:
        return 0
    if cell is not None and cell in (facts.cell, facts.running_cell):
        return 1
    return 2


def _missing_name(facts: FailureFacts) -> str | None:
    """`x` of `NameError: name 'x' is not defined` (or an unbound local)."""
    if facts.exception not in ("NameError", "UnboundLocalError"):
        return None
    m = re.search(r"(?:name|variable) '([A-Za-z_][\w]*)'", facts.message)
    return m.group(1) if m else None


def _in_notebook_process_failure(known: Known, child: dict | None) -> bool:
    """A CUDA-unavailable error raised inside the training function is not the notebook process's doing."""
    return known is not KNOWN[1] or child is None


def _parent_error(events: list[dict], cell: int | None) -> dict | None:
    errors = [e for e in events if e.get("event") == "error" and (cell is None or e.get("cell") == cell)]
    return errors[-1] if errors else None


def _failed_child(launches: list[dict]) -> dict | None:
    for lau in launches:
        failed = [r for r in lau["ranks"] if r.get("status") == "failed"]
        if failed:
            first = failed[0]
            return {
                "launch": lau["launch"],
                "rank": first.get("rank"),
                "pid": first.get("pid"),
                "ranks_failed": [r.get("rank") for r in failed],
                "exception": first.get("type"),
                "message": first.get("message"),
                "frames": first.get("frames") or [],
                "traceback": first.get("traceback"),
            }
    return None


def _timeout_hint(launches: list[dict]) -> str:
    running = [lau for lau in launches if lau["status"] == "running"]
    if running:
        lau = running[-1]
        statuses = {r["rank"]: r["status"] for r in lau["ranks"]}
        if statuses and all(s in ("returned", "finished") for s in statuses.values()) and statuses.get(0) == "returned":
            return (
                "every rank finished training but rank 0 is stuck sending the launched function's return value to the "
                "notebook (a pipe holds 64 KiB): return something small, or save to disk and return the path"
            )
        return (
            f"launch {lau['launch']} (cell {lau['cell']}) was still running: "
            + ", ".join(f"rank {r} {s}" for r, s in sorted(statuses.items()))
            + "; use `--smoke`, or a longer `--timeout`"
        )
    return "use a longer `--timeout`"


# ---------------------------------------------------------------------------------------------
# Text


def render_text(report: dict) -> str:
    lines = [_header(report)]
    launches_by_cell: dict[int, list[dict]] = {}
    for lau in report["launches"]:
        launches_by_cell.setdefault(lau["cell"], []).append(lau)
    for c in report["cells"]:
        if c["type"] != "code":
            continue
        secs = f"{c['seconds']:.2f}s" if c["seconds"] is not None else ""
        line = f"  cell {c['cell']:>3}  {c['status']:<12} {secs:>9}"
        notes = [_launch_line(lau) for lau in launches_by_cell.get(c["cell"], [])]
        lines.append(line + ("  " + "; ".join(notes) if notes else ""))
    for o in report["overrides"]:
        changes = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in o["changed"].items())
        lines.append(f"  override at cell {o['cell']}, line {o['line']}: {o['kind']}({changes})")
    for w in report["warnings"]:
        lines.append(f"  note: {w}")
    lines.extend(_verdict_lines(report))
    return "\n".join(lines) + "\n"


def _header(report: dict) -> str:
    ran = report["ran_on"]
    s = report["settings"]
    where = f"{ran['accelerator']} x {ran['devices']} ({ran['strategy']})" if ran else f"accelerator {s['accelerator']}"
    copy = " (the fixed copy; cells numbered as in the copy)" if report.get("copy") == "fixed" else ""
    return f"nbrefactor run {report['notebook']}{copy}: {where}, {s['mode']}"


def _launch_line(lau: dict) -> str:
    what = {"fabric": "fabric.launch", "accelerate": "notebook_launcher"}.get(lau["kind"], "Trainer")
    pids = ", ".join(str(r["pid"]) for r in lau["ranks"] if r.get("pid"))
    if lau["status"] == "stopped by the fork probe":
        return f"launch {lau['launch']} ({what}): stopped by the fork probe, nothing forked"
    if lau["ranks_done"] == lau["processes"]:
        return f"launch {lau['launch']} ({what}): {lau['ranks_done']}/{lau['processes']} ranks ran the training function (pids {pids})"
    ranks = ", ".join(f"rank {r['rank']} {r['status']}" for r in lau["ranks"]) or "no rank started"
    return f"launch {lau['launch']} ({what}): {ranks}" + (f" (pids {pids})" if pids else "")


def _verdict_lines(report: dict) -> list[str]:
    out = []
    clean = _cleanup_line(report["cleanup"])
    if report["verdict"] == "pass":
        ranks = report["ranks"]
        proof = f"{ranks} rank{'s' * (ranks != 1)} ran the training function, as the forked processes reported" if report["launches"] else "no launch point ran"
        out.append(f"PASS in {report['seconds']:.1f}s: {proof}; {clean}.")
        if report["static_findings"]:
            out.append(f"  note: the static check has {len(report['static_findings'])} finding(s) this run did not trip:")
            out.extend(f"    {d['text']}" for d in report["static_findings"])
        return out
    if report["verdict"] == "interrupted":
        out.append(f"INTERRUPTED after {report['seconds']:.1f}s; {clean}.")
        return out
    f = report["failure"]
    where = f"{report['notebook']}:cell {f['cell']}" + (f":{f['line']}" if f.get("line") else "") if f.get("cell") else report["notebook"]
    rule = f["rule"]
    child = f.get("child")
    if rule:
        head = f"{rule['code']} {rule['summary'] or _first_line(f.get('message'))}"
    elif child:
        head = f"{child['exception']}: {_first_line(child['message'])}"
    else:
        head = f"{f.get('exception') or 'failed'}: {_first_line(f.get('message'))}"
    out.append(f"FAIL: {where}: {head}")
    explained = f.get("explained_by")
    if explained:
        out.append(f"  the static check explains it: {explained['text']}")
        out.append(f"  see: nbrefactor rules {explained['code']}")
    if f.get("code"):
        out.append(f"  {f['code']}")
    if f.get("called_from"):
        c = f["called_from"]
        out.append(f"  called from cell {c['cell']}, line {c['line']}: {c['code']}")
    if f.get("cell") != f.get("running_cell") and f.get("running_cell"):
        out.append(f"  found by {f['found_by']}; the failure surfaced in cell {f['running_cell']}")
    elif f.get("found_by") != "the running cell":
        out.append(f"  found by {f['found_by']}")
    if rule:
        out.append(f"  {f.get('exception') or 'error'}: {_first_line(f.get('message'))}")
    if child:
        ranks = ", ".join(str(r) for r in child["ranks_failed"])
        out.append(f"  in the forked process{'es' * (len(child['ranks_failed']) != 1)} (rank {ranks}; launch {child['launch']}): {child['exception']}: {_first_line(child['message'])}")
        tb = (child.get("traceback") or "").rstrip().splitlines()
        out.extend(f"    | {line}" for line in tb[-12:])
    elif f.get("traceback") and not rule:
        tb = f["traceback"].rstrip().splitlines()
        out.extend(f"    | {line}" for line in tb[-12:])
    log = (f.get("kernel_log") or "").strip().splitlines()
    if log:
        out.append("  the kernel's last words:")
        out.extend(f"    | {line}" for line in log[-8:])
    if f.get("hint"):
        out.append(f"  hint: {f['hint']}")
    if rule and rule.get("name"):  # a rule `nbrefactor rules` knows
        out.append(f"  see: nbrefactor rules {rule['code']}")
    shown = {d["text"] for d in f["matching_findings"]} | ({explained["text"]} if explained else set())
    matching = [d for d in f["matching_findings"] if not explained or d["text"] != explained["text"]]
    if matching:
        label = "the static check agrees" if rule else "the static check found (may explain it)"
        out.append(f"  {label}:")
        out.extend(f"    {d['text']}" for d in matching)
    out.extend(_other_findings([d for d in report.get("static_findings", []) if d["text"] not in shown]))
    out.append(f"  {clean}")
    return out


OTHER_FINDINGS_SHOWN = 5


def _other_findings(others: list[dict]) -> list[str]:
    """The findings that cannot explain this failure, after it and said so: worth fixing, not the cause."""
    if not others:
        return []
    out = ["  other findings of the static check (not related to this failure):"]
    out.extend(f"    {d['text']}" for d in others[:OTHER_FINDINGS_SHOWN])
    if len(others) > OTHER_FINDINGS_SHOWN:
        out.append(f"    ... and {len(others) - OTHER_FINDINGS_SHOWN} more (`nbrefactor check`)")
    return out


def _first_line(text: str | None) -> str:
    for line in (text or "").strip().splitlines():
        if line.strip() and not line.startswith("-- Process"):
            return line.strip()
    return ""


def _cleanup_line(c: dict) -> str:
    ports = ", ".join(f"port {p} {state}" for p, state in c["ports"].items())
    n = len(c.get("stopped", c["processes"]))
    stopped = f"{n} process{'es' * (n != 1)} stopped"
    weak = " (only the kernel's process tree was tracked here)" if c.get("tracking") == "process tree" else ""
    if c["left_running"]:
        names = c.get("names", {})
        left = ", ".join(f"pid {p} ({names.get(str(p), '?')})" for p in c["left_running"])
        k = len(c["left_running"])
        return f"STILL RUNNING after cleanup: {stopped}; {k} could not be stopped: {left}{weak}; {ports}"
    return f"nothing left running ({stopped}){weak}, {ports}"


def render_compare(original: dict, fixed: dict, fix: dict | None = None) -> str:
    """Two verdicts side by side: the notebook as it is, and the fixed copy."""
    def col(r: dict) -> list[str]:
        f = r.get("failure") or {}
        rule = (f.get("rule") or {}).get("code") or (f.get("child") or {}).get("exception")
        where = f"cell {f['cell']}" + (f", line {f['line']}" if f.get("line") else "") if f.get("cell") else ""
        return [
            r["verdict"].upper(),
            str(r["ranks"]),
            f"{r['seconds']:.1f}s",
            " ".join(x for x in (rule or f.get("exception") or "", where) if x) or "-",
        ]

    left, right = col(original), col(fixed)
    width = max(len(x) for x in left + ["original"]) + 2
    lines = [f"{'':<10}{'original':<{width}}fixed"]
    for label, a, b in zip(("verdict", "ranks", "time", "failure"), left, right):
        lines.append(f"{label:<10}{a:<{width}}{b}")
    return "\n".join(lines) + "\n"
