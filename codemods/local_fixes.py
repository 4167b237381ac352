"""Fixes that change one call or add one import: NBR401 (notebook strategy), NBR102 (import
Lightning, or set the NVML check, before the CUDA probe), NBR402 and NBR403 (explicit devices /
`num_processes`, only when the user names a count)."""

from __future__ import annotations

import libcst as cst

from codemods import names as N
from codemods.cells import BodyPlan, rebuild, without_cell_part
from codemods.device import ProcessDevice
from codemods.facts import NotebookFacts, lightning_import
from codemods.rules.base import runs_before_a_launch
from codemods.rules.nbr401_strategy_not_notebook_compatible import NOTEBOOK_EQUIVALENT, notebook_strategy
from codemods.rules.nbr402_devices_auto_in_notebook import automatic_devices
from codemods.walk import walk


class _Replace(cst.CSTTransformer):
    def __init__(self, replacements: dict[int, cst.CSTNode]):
        self.replacements = replacements

    def on_leave(self, original, updated):
        return self.replacements.get(id(original), updated)


def append_keyword(call: cst.Call, keyword: str, value: cst.BaseExpression) -> cst.Call:
    """`call` with `keyword=value` added last, laid out like the call's other arguments: on the
    same line for a one-line call, on its own line (same indentation) for a multi-line one."""
    new = cst.Arg(value, keyword=cst.Name(keyword), equal=cst.AssignEqual(cst.SimpleWhitespace(""), cst.SimpleWhitespace("")))
    args = list(call.args)
    if not args:
        return call.with_changes(args=[new])
    last = args[-1]
    multiline = isinstance(call.whitespace_before_args, cst.ParenthesizedWhitespace)
    if multiline:
        comma_ws = call.whitespace_before_args  # newline + the arguments' indentation
        closing = last.whitespace_after_arg if isinstance(last.comma, cst.MaybeSentinel) else (
            last.comma.whitespace_after if isinstance(last.comma, cst.Comma) else cst.SimpleWhitespace(""))
        args[-1] = last.with_changes(comma=cst.Comma(whitespace_after=comma_ws), whitespace_after_arg=cst.SimpleWhitespace(""))
        new = new.with_changes(whitespace_after_arg=closing) if isinstance(last.comma, cst.MaybeSentinel) else new.with_changes(
            comma=cst.Comma(whitespace_after=closing))
    else:
        args[-1] = last.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    return call.with_changes(args=[*args, new])


def _quoted(original: cst.SimpleString, value: str) -> cst.SimpleString:
    quote = original.quote
    return cst.SimpleString(f"{original.prefix}{quote}{value}{quote}")


def notebook_strategies(facts: NotebookFacts) -> tuple[dict[int, cst.CSTNode], list[tuple[str, cst.CSTNode, str]]]:
    """NBR401: `ddp`/`ddp_spawn` -> `ddp_notebook`; `DDPStrategy(...)` gets `start_method="fork"`."""
    replacements: dict[int, cst.CSTNode] = {}
    changes = []
    for c in facts.constructors:
        if c.kind == "ddp_strategy":
            start = N.call_arg(c.node, "start_method")
            if start is None:
                replacements[id(c.node)] = append_keyword(c.node, "start_method", cst.SimpleString('"fork"'))
                changes.append(("NBR401", c.node, 'DDPStrategy(...) now forks: start_method="fork"'))
            elif isinstance(start.value, cst.SimpleString) and N.string_value(start.value) in ("spawn", "popen", "forkserver"):
                replacements[id(start.value)] = _quoted(start.value, "fork")
                changes.append(("NBR401", c.node, f"DDPStrategy start method {N.string_value(start.value)!r} -> 'fork'"))
            continue
        arg = N.call_arg(c.node, "strategy", 1 if c.kind == "fabric" else None)
        if arg is None or not isinstance(arg.value, cst.SimpleString):
            continue
        strategy = N.string_value(arg.value)
        if strategy is None or not (strategy in NOTEBOOK_EQUIVALENT or strategy.startswith(("deepspeed", "fsdp"))):
            continue
        new = notebook_strategy(strategy)
        if new is None or (c.kind == "fabric" and "find_unused" in new):
            continue  # reported; no fork-based equivalent to write
        replacements[id(arg.value)] = _quoted(arg.value, new)
        changes.append(("NBR401", c.node, f"strategy {strategy!r} -> {new!r}"))
    return replacements, changes


def script_strategies(facts: NotebookFacts) -> tuple[dict[int, cst.CSTNode], list[tuple[str, cst.CSTNode, str]]]:
    """NBR601 in a script: `ddp_notebook`/`ddp_fork` -> `ddp` (NBR401's fix, reversed)."""
    from codemods.rules.nbr601_notebook_launch_in_script import SCRIPT_EQUIVALENT, forking_strategies

    replacements: dict[int, cst.CSTNode] = {}
    changes = []
    for c, arg, strategy in forking_strategies(facts):
        new = SCRIPT_EQUIVALENT[strategy]
        replacements[id(arg.value)] = _quoted(arg.value, new)
        changes.append(("NBR601", c.node, f"strategy {strategy!r} -> {new!r}"))
    return replacements, changes


def script_main_guard(facts: NotebookFacts) -> tuple[BodyPlan, list[tuple[str, cst.CSTNode, str]]]:
    """NBR603 in a script: the statements from the first launching one to the end move into
    `if __name__ == "__main__":` (only when no definition or import follows it)."""
    from codemods.rules.nbr603_spawn_without_main_guard import main_guard_plan, spawns

    plan = BodyPlan()
    found = main_guard_plan(facts) if spawns(facts) else None
    if found is None:
        return plan, []
    first, guard = found
    plan.replace(first, [guard])
    for index in range(first + 1, len(facts.statements)):
        plan.remove(index)
    return plan, [("NBR603", facts.statements[first].node, 'launching code moved into `if __name__ == "__main__":`')]


def explicit_devices(facts: NotebookFacts, devices: int) -> tuple[dict[int, cst.CSTNode], list[tuple[str, cst.CSTNode, str]]]:
    """NBR402 with `--devices N`: `devices="auto"` or no devices -> `devices=N`."""
    replacements: dict[int, cst.CSTNode] = {}
    changes = []
    for c, arg in automatic_devices(facts):
        if arg is None:
            replacements[id(c.node)] = append_keyword(c.node, "devices", cst.Integer(str(devices)))
        else:
            replacements[id(arg.value)] = cst.Integer(str(devices))
        changes.append(("NBR402", c.node, f"devices={devices}"))
    return replacements, changes


def explicit_num_processes(facts: NotebookFacts, devices: int) -> tuple[list[tuple[str, cst.CSTNode, str]], dict[int, cst.CSTNode]]:
    """NBR403 with `--devices N`: `notebook_launcher(fn)` -> `notebook_launcher(fn, num_processes=N)`.
    Returns (changes, replacements): `Edit`'s order."""
    from codemods.rules.nbr403_launcher_without_num_processes import launchers_without_num_processes

    replacements: dict[int, cst.CSTNode] = {}
    changes = []
    for call in launchers_without_num_processes(facts):
        replacements[id(call)] = append_keyword(call, "num_processes", cst.Integer(str(devices)))
        changes.append(("NBR403", call, f"num_processes={devices}"))
    return changes, replacements


def _is_lightning_module(expr: cst.BaseExpression, facts: NotebookFacts) -> bool:
    if isinstance(expr, cst.Name):
        v = facts.env.get(expr.value)
        return v is not None and v.kind == "lightning_module"
    if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Name):
        return expr.func.value in facts.lightning_module_classes
    return False


def _moved_name(facts: NotebookFacts, index: int, call: cst.Call) -> cst.BaseExpression:
    """What `.cuda()` / `.to(...)` moves: its receiver, or the name a line binds it to
    (`model = Net().to(device)`)."""
    node = facts.statements[index].node
    if isinstance(node, cst.SimpleStatementLine) and len(node.body) == 1 and isinstance(node.body[0], cst.Assign):
        targets = node.body[0].targets
        if node.body[0].value is call and len(targets) == 1 and isinstance(targets[0].target, cst.Name):
            return targets[0].target
    return call.func.value


def _prepared_by_launcher(expr: cst.BaseExpression, facts: NotebookFacts) -> bool:
    """A notebook name handed to `notebook_launcher` whose launched function calls `.prepare(...)`
    (Accelerate moves what it prepares to each process's device)."""
    if not isinstance(expr, cst.Name):
        return False
    for lp in facts.launches:
        summary = facts.functions.get(lp.function or "") if lp.kind == "notebook_launcher" and lp.via is None else None
        if summary is not None and expr.value in lp.direct and any(
                isinstance(c.func, cst.Attribute) and c.func.attr.value == "prepare" for c in summary.calls):
            return True
    return False


def cuda_before_fit(facts: NotebookFacts) -> tuple[BodyPlan, dict[int, cst.CSTNode], list[tuple[str, cst.CSTNode, str]]]:
    """NBR101 in Trainer and Accelerate notebooks (unsafe): the Trainer (or `accelerator.prepare` in
    the function `notebook_launcher` runs) moves the model to its devices itself, so
    `model.cuda()` / `model.to(device)` before a launch goes; checkpoints are loaded onto the CPU
    (`map_location="cpu"`), in cells and in the notebook functions they call."""
    plan = BodyPlan()
    replacements: dict[int, cst.CSTNode] = {}
    changes = []
    if not any(lp.kind.startswith("trainer.") or lp.kind == "notebook_launcher" for lp in facts.launches):
        return plan, replacements, changes
    for use in facts.cuda:
        if not runs_before_a_launch(facts, use):
            continue
        call = use.inner or use.node
        func = call.func
        if not isinstance(func, cst.Attribute):
            if N.dotted(func) in ("torch.load", "torch.jit.load") and N.call_arg(call, "map_location", 1) is None:
                replacements[id(call)] = _with_map_location(call)
                changes.append(("NBR101", call, f"{N.dotted(func)}(..., map_location=\"cpu\")"))
            continue
        attr = func.attr.value
        if attr == "load_from_checkpoint" and N.call_arg(call, "map_location") is None:
            replacements[id(call)] = _with_map_location(call)
            changes.append(("NBR101", call, "load_from_checkpoint(..., map_location=\"cpu\")"))
        elif attr == "load" and N.dotted(func) is not None and N.call_arg(call, "map_location", 1) is None and "torch" in (N.dotted(func) or ""):
            replacements[id(call)] = _with_map_location(call)
            changes.append(("NBR101", call, f"{N.dotted(func)}(..., map_location=\"cpu\")"))
        elif attr in ("cuda", "to") and use.via is None and (
                _is_lightning_module(func.value, facts) or _prepared_by_launcher(_moved_name(facts, use.statement, call), facts)):
            st = facts.statements[use.statement]
            node = st.node
            receiver = func.value
            whole = isinstance(node, cst.SimpleStatementLine) and len(node.body) == 1 and (
                (isinstance(node.body[0], cst.Expr) and node.body[0].value is call)
                or (isinstance(node.body[0], cst.Assign) and node.body[0].value is call and isinstance(receiver, cst.Name)
                    and [t.target for t in node.body[0].targets if isinstance(t.target, cst.Name) and t.target.value == receiver.value])
            )
            if whole:
                plan.remove(use.statement)
            elif _drop_self_assignment(node, call, receiver, replacements) == "statement":
                plan.remove(use.statement)
            elif id(call) not in replacements and not any(id(n) in replacements for n in walk(node)):
                replacements[id(call)] = receiver
            mover = "the Trainer moves" if _is_lightning_module(receiver, facts) else "`accelerator.prepare` in the launched function moves"
            what = "the LightningModule" if _is_lightning_module(receiver, facts) else f"`{N.dotted(_moved_name(facts, use.statement, call))}`"
            changes.append(("NBR101", call, f"removed `.{attr}(...)` on {what}: {mover} it to each process's device"))
    return plan, replacements, changes


def _drop_self_assignment(statement: cst.CSTNode, call: cst.Call, receiver: cst.BaseExpression, replacements: dict) -> str | None:
    """`model = model.cuda()` nested in a block (`if torch.cuda.is_available():`) would become
    `model = model`: the line goes instead ("line"), or the whole top-level `if` when that line was
    all it did ("statement"; `pass` in any other block it was alone in)."""
    if not isinstance(receiver, cst.Name):
        return None
    for block in walk(statement):
        if not isinstance(block, cst.IndentedBlock):
            continue
        for line in block.body:
            if not (isinstance(line, cst.SimpleStatementLine) and len(line.body) == 1 and isinstance(line.body[0], cst.Assign)):
                continue
            assign = line.body[0]
            targets = [t.target for t in assign.targets]
            if assign.value is call and len(targets) == 1 and isinstance(targets[0], cst.Name) and targets[0].value == receiver.value:
                if len(block.body) == 1 and isinstance(statement, cst.If) and statement.body is block and statement.orelse is None:
                    return "statement"
                replacements[id(line)] = cst.RemoveFromParent() if len(block.body) > 1 else line.with_changes(body=[cst.Pass()])
                return "line"
    return None


def cuda_into_on_fit_start(facts: NotebookFacts) -> tuple[BodyPlan, list[tuple[str, int, str]]]:
    """NBR101 in Trainer notebooks (unsafe): other CUDA work that runs before a launch, and whose
    results nothing else reads, moves into the notebook LightningModule's `on_fit_start` hook, so
    it runs in each training process instead, on that process's device (`.cuda()` ->
    `.to(self.device)`, see `codemods.device`). Work that something else reads stays reported."""
    plan = BodyPlan()
    fits = [lp for lp in facts.launches if lp.kind == "trainer.fit" and lp.via is None]
    if not fits:
        return plan, []
    model = N.call_arg(fits[0].node, "model", 0)
    value = facts.env.get(model.value.value) if model is not None and isinstance(model.value, cst.Name) else None
    cls_name = value.node.func.value if value is not None and value.kind == "lightning_module" and isinstance(getattr(value.node, "func", None), cst.Name) else None
    if cls_name not in facts.lightning_module_classes:
        return plan, []
    cls_index = next(st.index for st in facts.statements if isinstance(st.node, cst.ClassDef) and st.node.name.value == cls_name)
    cls_node = facts.statements[cls_index].node
    if any(isinstance(s, cst.FunctionDef) and s.name.value == "on_fit_start" for s in cls_node.body.body):
        return plan, []
    candidates = sorted({u.statement for u in facts.cuda if u.via is None and runs_before_a_launch(facts, u)})
    readers_of: dict[str, list[int]] = {}  # name -> the statements that read it (not a scan per candidate)
    for o in facts.statements if candidates else ():
        for name in o.uses:
            readers_of.setdefault(name, []).append(o.index)
    moving = []
    for i in candidates:
        st = facts.statements[i]
        node = st.node
        if i <= cls_index or not isinstance(node, cst.SimpleStatementLine):
            continue
        if any(isinstance(small, (cst.Import, cst.ImportFrom)) for small in node.body):
            continue
        on_module = any(_is_lightning_module(c.func.value, facts) for c in st.calls if isinstance(c.func, cst.Attribute) and c.func.attr.value in ("cuda", "to"))
        readers = any(j != i for name in st.defines for j in readers_of.get(name, ()))
        if on_module or readers:
            continue
        moving.append(i)
    if not moving:
        return plan, []
    on_device = ProcessDevice("self.device", facts)
    body = [without_cell_part(facts.statements[i].node).visit(on_device) for i in moving]
    hook = cst.parse_statement("def on_fit_start(self):\n    pass\n")
    hook = hook.with_changes(body=hook.body.with_changes(body=body), leading_lines=[cst.EmptyLine(indent=False)])
    plan.replace(cls_index, [cls_node.with_changes(body=cls_node.body.with_changes(body=[*cls_node.body.body, hook]))])
    for i in moving:
        plan.remove(i)
    cells = sorted({facts.statements[i].cell + 1 for i in moving})
    message = f"deferred the CUDA work of cell {', '.join(map(str, cells))} into {cls_name}.on_fit_start"
    if on_device.rewrites:
        message += f", on each process's own device: {on_device.summary()}"
    return plan, [("NBR101", facts.statements[moving[0]].cell, message)]


def _with_map_location(call: cst.Call) -> cst.Call:
    return append_keyword(call, "map_location", cst.SimpleString('"cpu"'))


def lightning_before_probe(facts: NotebookFacts) -> tuple[BodyPlan, list[tuple[str, int, str]]]:
    """NBR102: import Lightning (which sets PYTORCH_NVML_BASED_CUDA_CHECK=1) just before the first
    top-level statement that probes CUDA before Lightning is imported."""
    plan = BodyPlan()
    first = facts.lightning_import
    probes = [p for p in facts.cuda_probes if (first is None or p.statement < first) and runs_before_a_launch(facts, p)]
    if not probes:
        return plan, []
    index = min(p.statement for p in probes)
    module = lightning_import(facts)
    package = module.split(".")[0] if module else None
    if package is None:
        line = 'import os; os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # keeps torch.cuda.is_available() fork-safe\n'
    else:
        line = f"import {package}  # sets PYTORCH_NVML_BASED_CUDA_CHECK=1, so the CUDA probe below stays fork-safe\n"
    stmt = facts.statements[index].node
    plan.replace(index, [cst.parse_statement(line), without_cell_part(stmt)])
    done = f"imported {package} before the CUDA probe" if package else "set PYTORCH_NVML_BASED_CUDA_CHECK=1 before the CUDA probe"
    return plan, [("NBR102", facts.statements[index].cell, done)]


def apply_replacements(module: cst.Module, replacements: dict[int, cst.CSTNode]) -> cst.Module:
    """`module` with the nodes named in `replacements` (by id) replaced. Only the top-level
    statements that hold one are rebuilt: a transformer over the whole module rebuilds every node,
    which cost more than the fixes themselves on a large notebook."""
    if not replacements:
        return module
    wanted = set(replacements)
    body = list(module.body)
    for index, stmt in enumerate(body):
        if not wanted:
            break
        found = {id(n) for n in walk(stmt) if id(n) in wanted}
        if found:
            wanted -= found
            body[index] = stmt.visit(_Replace(replacements))
            if not isinstance(body[index], cst.CSTNode):  # removed or split: the module's own visit
                return module.visit(_Replace(replacements))
    if wanted:  # in the module's header or footer, or not in it: the whole module, as before
        return module.visit(_Replace(replacements))
    return module.with_changes(body=body)


__all__ = ["apply_replacements", "explicit_devices", "explicit_num_processes", "lightning_before_probe", "notebook_strategies", "rebuild"]
