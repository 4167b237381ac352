"""A fixed notebook's code cells as a script for real distributed launchers (`nbrefactor export`).

Input: the code cells of the notebook as `fix` leaves it, each with its number in the original
notebook. Output: a script whose Trainer/Fabric construction reads `--accelerator`, `--devices`,
`--num-nodes` (and, for Fabric, `--strategy`/`--precision` where the notebook sets them), with the
training cells in `def main(args):` under `if __name__ == "__main__":`. An Accelerate notebook's
`notebook_launcher(training_function, args)` becomes `training_function(*args)` in main, which
`accelerate launch` runs in every process it starts; `--cpu` is the script's one option. Display-only code (plots,
`display(...)`, a bare expression ending a cell, magics, shell lines) is left out with a comment.
Works on source text with `ast` positions so that comments are kept; no nbrefactor import.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

DISPLAY_MODULES = ("matplotlib", "seaborn", "IPython", "plotly")
DISPLAY_NAMES = frozenset({"plt", "sns", "display", "px", "go"})
FORK_STRATEGIES = frozenset({"ddp_notebook", "ddp_fork", "ddp_spawn", "ddp_notebook_find_unused_parameters_true",
                             "ddp_fork_find_unused_parameters_true", "ddp_spawn_find_unused_parameters_true"})
HOISTED = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


class ExportError(Exception):
    """Why the notebook cannot be exported (one line)."""


@dataclass
class Piece:
    """One top-level statement of a cell, with the comment lines above it."""

    cell: int  # 1-based number in the original notebook
    text: str
    node: ast.stmt


@dataclass
class Option:
    name: str  # the keyword argument (`num_nodes`)
    default: object
    note: str = ""
    help: str = ""  # what the option does, where "NAME of the Trainer" does not say it

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass
class Plan:
    kind: str  # "trainer" | "fabric" | "accelerate"
    options: list[Option] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # comment lines: what was left out
    launch: dict[str, object] = field(default_factory=dict)  # notebook_launcher's num_processes, num_nodes, mixed_precision

    def default(self, name: str, fallback=None):
        return next((o.default for o in self.options if o.name == name), fallback)


# --- reading cells -------------------------------------------------------------------------------


def _without_magics(source: str, cell: int, notes: list[str]) -> str | None:
    """The cell with IPython lines commented out; None for a cell magic (`%%...`)."""
    if source.lstrip().startswith("%%"):
        notes.append(f"# cell {cell} left out: cell magic {source.lstrip().splitlines()[0]!r}")
        return None
    lines = []
    for line in source.split("\n"):
        if line.lstrip().startswith(("%", "!")):
            notes.append(f"# cell {cell}: left out {line.strip()!r} (IPython)")
            line = line[: len(line) - len(line.lstrip())] + "pass" if line[:1].isspace() else ""
        lines.append(line)
    return "\n".join(lines)


def _pieces(source: str, cell: int) -> list[Piece]:
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ExportError(f"cell {cell} is not Python after its IPython lines are left out ({err.msg}, line {err.lineno})") from None
    lines = source.split("\n")
    out, start = [], 0
    for node in tree.body:
        end = node.end_lineno
        text = "\n".join(lines[start:end]).rstrip("\n")
        out.append(Piece(cell, text, node))
        start = end
    return out


# --- display-only code ---------------------------------------------------------------------------


def _names(node) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _bound(node) -> set[str]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _display_import(node) -> bool:
    if isinstance(node, ast.Import):
        return all(a.name.split(".")[0] in DISPLAY_MODULES for a in node.names)
    return isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in DISPLAY_MODULES


def _is_display(node, shown: set[str]) -> bool:
    """Whether a statement only draws or shows something (reads only display names)."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return _display_import(node)
    if isinstance(node, (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign)):
        return bool(_names(node) & shown)
    if isinstance(node, (ast.For, ast.If, ast.With, ast.While)):
        body = [*node.body, *getattr(node, "orelse", [])]
        return all(_is_display(s, shown) for s in body)
    return False


def _shown_at_end(node) -> bool:
    """A bare expression ending a cell: Jupyter shows it, a script would compute it for nothing."""
    return isinstance(node, ast.Expr) and not isinstance(node.value, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom))


def _keep(pieces: list[Piece], shown: set[str], notes: list[str]) -> list[Piece]:
    kept = []
    for i, p in enumerate(pieces):
        if _is_display(p.node, shown) or (i == len(pieces) - 1 and _shown_at_end(p.node)):
            shown |= _bound(p.node)
            first = ast.unparse(p.node).split("\n")[0]
            notes.append(f"# cell {p.cell}: left out {first!r} (display)")
            continue
        kept.append(p)
    return kept


def read_cells(cells: list[tuple[int, str]], plan: Plan) -> list[Piece]:
    """The statements to export, in order; what is left out is noted in `plan.notes`."""
    shown = set(DISPLAY_NAMES)
    out: list[Piece] = []
    for number, source in cells:
        text = _without_magics(source, number, plan.notes)
        if text is None or not text.strip():
            continue
        notes_before = len(plan.notes)
        kept = _keep(_pieces(text, number), shown, plan.notes)
        if not kept and len(plan.notes) > notes_before:
            del plan.notes[notes_before:]
            plan.notes.append(f"# cell {number} left out: it only displays")
        out.extend(kept)
    return out


# --- the constructor -----------------------------------------------------------------------------


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _constructors(node) -> list[ast.Call]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Call) and _callee(n) in ("Trainer", "Fabric")]


def find_constructor(pieces: list[Piece]) -> tuple[int, ast.Call]:
    """(index of the top-level statement building the Trainer/Fabric, the call)."""
    found = [(i, c) for i, p in enumerate(pieces) for c in _constructors(p.node)]
    if not found:
        raise ExportError("no lightning Trainer(...) or Fabric(...) to export")
    if len(found) > 1:
        found = _launched(pieces, found) or found
    if len(found) > 1:
        cells = ", ".join(str(pieces[i].cell) for i, _ in found)
        raise ExportError(f"{len(found)} Trainer/Fabric constructions (cells {cells}); export handles one")
    i, call = found[0]
    if isinstance(pieces[i].node, HOISTED):
        raise ExportError(f"cell {pieces[i].cell}: the {_callee(call)} is built inside a function or class; export needs it at top level")
    return i, call


LAUNCHES = frozenset({"fit", "launch"})


def _launched(pieces: list[Piece], found: list[tuple[int, ast.Call]]) -> list[tuple[int, ast.Call]]:
    """Of several constructions, those bound to a name whose `.fit(...)`/`.launch(...)` the notebook
    calls: the Trainer that trains, not a helper one (NBR503's fix tunes `lr_find` on a one-process
    Trainer built inside `Tuner(...)`, left as the notebook has it)."""
    calls = {n.func.value.id for p in pieces for n in ast.walk(p.node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr in LAUNCHES and isinstance(n.func.value, ast.Name)}
    return [(i, c) for i, c in found if _target(pieces[i]) in calls and pieces[i].node.value is c]


def _literal(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


MANAGED = {"trainer": ("accelerator", "devices", "num_nodes"), "fabric": ("accelerator", "devices", "num_nodes", "strategy", "precision")}
FALLBACK = {"accelerator": "auto", "devices": "auto", "num_nodes": 1}


def plan_options(call: ast.Call, plan: Plan) -> None:
    given = {k.arg: k.value for k in call.keywords if k.arg}
    for name in MANAGED[plan.kind]:
        if name not in given and name not in FALLBACK:
            continue  # Fabric's strategy/precision: options only where the notebook sets them
        value = _literal(given[name]) if name in given else FALLBACK[name]
        note = ""
        if name in given and value is None:
            value, note = FALLBACK.get(name, "auto"), f"the notebook's {ast.unparse(given[name])!r} is not a literal"
        if name == "strategy" and value in FORK_STRATEGIES:
            value, note = "ddp", f"the notebook's {value!r} forks, which a script launcher does itself"
        plan.options.append(Option(name, value, note))


def _span(text: str, node) -> tuple[int, int]:
    lines = text.split("\n")
    return _byte_col(lines, node.lineno, node.col_offset), _byte_col(lines, node.end_lineno, node.end_col_offset)


def _byte_col(lines: list[str], line: int, col: int) -> int:
    """A character offset into the joined text from ast's (line, UTF-8 byte column)."""
    before = sum(len(s) + 1 for s in lines[: line - 1])
    return before + len(lines[line - 1].encode("utf-8")[:col].decode("utf-8", errors="ignore"))


def rewrite_constructor(piece: Piece, plan: Plan) -> str:
    """The statement's text with the managed keyword arguments read from `args`; a Trainer's
    forking strategy becomes "ddp"."""
    text = piece.text
    tree = ast.parse(text)
    call = _constructors(tree)[0]
    edits = []  # (start, end, replacement), applied from the end
    given = {k.arg: k for k in call.keywords if k.arg}
    for option in plan.options:
        if option.name in given:
            edits.append((*_span(text, given[option.name].value), f"args.{option.name}"))
    strategy = given.get("strategy")
    if plan.kind == "trainer" and strategy is not None and _literal(strategy.value) in FORK_STRATEGIES:
        edits.append((*_span(text, strategy.value), '"ddp"'))
    missing = [o for o in plan.options if o.name not in given]
    if missing:
        end = _span(text, call)[1] - 1  # the closing parenthesis
        head = text[:end].rstrip()
        sep = "" if head.endswith(("(", ",")) else ","
        sep += " " if not head.endswith("(") else ""
        added = ", ".join(f"{o.name}=args.{o.name}" for o in missing)
        edits.append((len(head), end, f"{sep}{added}"))
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


# --- Accelerate: notebook_launcher -> a call in main -------------------------------------------

LAUNCHER_PARAMETERS = ("function", "args", "num_processes", "mixed_precision")  # notebook_launcher's first ones
LAUNCH_SETTINGS = ("num_processes", "num_nodes", "mixed_precision")  # what `accelerate launch` is told instead
CPU_HELP = ("train on the CPU even where there are GPUs (Accelerator(cpu=True)); several processes on a machine "
            "without GPUs need it: accelerate launch --multi_gpu --num_processes N SCRIPT --cpu")


def _launcher_arguments(call: ast.Call) -> dict[str, ast.expr]:
    given = dict(zip(LAUNCHER_PARAMETERS, call.args))
    given.update({k.arg: k.value for k in call.keywords if k.arg})
    return given


def find_notebook_launcher(pieces: list[Piece]) -> tuple[int, ast.Call]:
    """(index of the top-level statement `notebook_launcher(...)`, the call)."""
    found = [(i, c) for i, p in enumerate(pieces) for c in ast.walk(p.node) if isinstance(c, ast.Call) and _callee(c) == "notebook_launcher"]
    if not found:
        raise ExportError("no notebook_launcher(...) call to export")
    if len(found) > 1:
        cells = ", ".join(str(pieces[i].cell) for i, _ in found)
        raise ExportError(f"{len(found)} notebook_launcher calls (cells {cells}); export handles one")
    i, call = found[0]
    node = pieces[i].node
    if not (isinstance(node, ast.Expr) and node.value is call):
        raise ExportError(f"cell {pieces[i].cell}: notebook_launcher(...) is not a statement of its own at top level; export needs it there")
    if any(isinstance(a, ast.Starred) for a in call.args) or "function" not in _launcher_arguments(call):
        raise ExportError(f"cell {pieces[i].cell}: notebook_launcher's function is not named in the call")
    return i, call


def _cpu_default(pieces: list[Piece]) -> tuple[bool, str]:
    """--cpu's default: True where the notebook builds `Accelerator(cpu=True)`."""
    for p in pieces:
        for call in ast.walk(p.node):
            if isinstance(call, ast.Call) and _callee(call) in ("Accelerator", "PartialState"):
                if any(k.arg == "cpu" and _literal(k.value) is True for k in call.keywords):
                    return True, f"the notebook's {_callee(call)}(cpu=True) in cell {p.cell}"
    return False, ""


def plan_accelerate(pieces: list[Piece], call: ast.Call, plan: Plan) -> None:
    given = _launcher_arguments(call)
    for name in LAUNCH_SETTINGS:
        value = _literal(given[name]) if name in given else None
        if value is not None:
            plan.launch[name] = value
    default, note = _cpu_default(pieces)
    plan.options.append(Option("cpu", default, note, CPU_HELP))


def rewrite_notebook_launcher(piece: Piece) -> str:
    """`notebook_launcher(f, args=(a, b), num_processes=2)` as `f(a, b)`: `accelerate launch` has
    already started this process and its siblings."""
    text = piece.text
    call = next(c for c in ast.walk(ast.parse(text)) if isinstance(c, ast.Call) and _callee(c) == "notebook_launcher")
    given = _launcher_arguments(call)

    def source(node) -> str:
        return text[slice(*_span(text, node))]

    args = given.get("args")
    if args is None:
        inner = ""
    elif isinstance(args, (ast.Tuple, ast.List)):
        inner = ", ".join(source(e) for e in args.elts)
    else:
        inner = f"*{source(args)}"
    start, end = _span(text, call)
    note = f"# the notebook's {ast.unparse(call)}: here `accelerate launch` has started the processes\n"
    return f"{text[:start]}{note}{source(given['function'])}({inner}){text[end:]}"


def _fresh(name: str, pieces: list[Piece]) -> str:
    used = set().union(*(_names(p.node) | _bound(p.node) for p in pieces))
    while name in used:
        name = "_" + name
    return name


# --- the script ----------------------------------------------------------------------------------


def _free_reads(top: list[Piece]) -> set[str]:
    """Global names read inside the module-level functions and classes (symtable's scopes)."""
    import symtable

    source = "\n".join(p.text for p in top if isinstance(p.node, HOISTED[2:]))
    out: set[str] = set()
    stack = list(symtable.symtable(source, "<export>", "exec").get_children())
    while stack:
        table = stack.pop()
        out |= {s.get_name() for s in table.get_symbols() if s.is_global() and s.is_referenced()}
        stack.extend(table.get_children())
    return out


def _target(piece: Piece) -> str | None:
    node = piece.node
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    return None


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line.strip() else "" for line in text.split("\n"))


def _is_print(node) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and _callee(node.value) == "print"


def _launch_calls(node) -> list[ast.Call]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "launch"]


def _launches(node) -> bool:
    return bool(_launch_calls(node))


LAUNCHER = '''def launcher(fabric):
    """`fabric.launch`; under `fabric run`, which has started the processes and refuses `launch()`,
    a direct call of the function."""
    import os

    if os.environ.get("LT_CLI_USED", "0") not in ("", "0"):
        return lambda function=lambda fabric: None, *args, **kwargs: function(fabric, *args, **kwargs)
    return fabric.launch'''


def rewrite_launch(piece: Piece) -> str:
    """`fabric.launch(...)` as `launcher(fabric)(...)`, which `fabric run` accepts too."""
    text = piece.text
    for call in sorted(_launch_calls(ast.parse(text)), key=lambda c: (c.lineno, c.col_offset), reverse=True):
        start, end = _span(text, call.func)
        text = f"{text[:start]}launcher({ast.unparse(call.func.value)}){text[end:]}"
    return text


def _print_after_launch(text: str, owner: str) -> str:
    """`print(..., launcher(fabric)(train))`: launch on every rank, print on rank 0."""
    call = next(c for c in ast.walk(ast.parse(text)) if isinstance(c, ast.Call) and isinstance(c.func, ast.Call)
                and _callee(c.func) == "launcher")
    start, end = _span(text, call)
    lines = [f"launch_result = {text[start:end]}", f"if {owner}.global_rank == 0:", _indent(text[:start] + "launch_result" + text[end:])]
    return "\n".join(lines)


def _guarded(body: list[Piece], ctor: Piece | None, launch) -> list[bool]:
    """Which statements of main run on rank 0 only: prints once the Trainer/Fabric is built (the
    notebook printed once; Accelerate's state is built first thing in main); for Fabric and
    Accelerate, all that follows the launch (`launch(piece)` says which that is: it reads the
    results rank 0 holds, as the notebook process did)."""
    out, built, launched = [], ctor is None, False
    handed = _handed_back(body)
    for p in body:
        out.append(launched or (built and _is_print(p.node) and not launch(p)) or id(p) in handed)
        built = built or p is ctor
        launched = launched or launch(p)
    return out


HAND_BACK_NOTE = "rank 0 hands them back through a file"  # the leading comment of the NBR502 fix's callback


def _handed_back(body: list[Piece]) -> set[int]:
    """ids of the statements that load what rank 0 handed back through a file (NBR502's fix:
    `handed_back = torch.load(hand_back.path, ...)` and the reads of `handed_back`). In a script
    every rank holds its own values and only rank 0 wrote the file (at a temporary path of its
    own): those run on rank 0 alone."""
    callback = next((_target(p) for p in body if HAND_BACK_NOTE in p.text and _target(p)), None)
    out, loaded = set(), set()
    for p in body:
        path = any(isinstance(n, ast.Attribute) and n.attr == "path" and isinstance(n.value, ast.Name) and n.value.id == callback
                   for n in ast.walk(p.node))
        if callback and (path or _names(p.node) & loaded):
            out.add(id(p))
            loaded |= _bound(p.node) if path else set()
    return out


def _main_body(body: list[Piece], texts: dict[int, str], guards: list[bool], rank0: str | None) -> list[str]:
    """main's lines, consecutive rank-0 statements in one `if RANK0:` block."""
    out, cell, open_ = [], None, False
    for p, guard in zip(body, guards):
        guard = guard and rank0 is not None
        if guard and not open_:
            out.append(f"if {rank0}:")
        open_ = guard
        pad = "    " if guard else ""
        text = texts.get(id(p), p.text)
        if p.cell != cell:
            cell, text = p.cell, text.lstrip("\n")
            out.append(f"{pad}# cell {cell}")
        out.append(_indent(text, pad) if pad else text)
    return out


def _lightning_main(body: list[Piece], ctor: Piece, plan: Plan) -> tuple[dict[int, str], list[bool], str | None]:
    """(rewritten texts, rank-0 guards, the rank-0 condition) for a Trainer or Fabric."""
    texts = {id(ctor): rewrite_constructor(ctor, plan)}
    owner = _target(ctor)
    if plan.kind == "fabric":
        texts.update({id(p): rewrite_launch(p) for p in body if _launches(p.node)})
        for p in body:
            if owner and _is_print(p.node) and _launches(p.node):
                texts[id(p)] = _print_after_launch(texts[id(p)], owner)
    launch = (lambda p: _launches(p.node)) if plan.kind == "fabric" else (lambda p: False)
    guards = _guarded(body, ctor, launch)
    if plan.kind == "trainer" and owner:
        guards = _after_fit(body, guards, owner)
    return texts, guards, owner and f"{owner}.global_rank == 0"


def _uses_trainer(node, trainer: str) -> bool:
    """Whether the statement calls the Trainer or hands it to a call (`trainer.test(...)`,
    `evaluate(trainer)`): such calls may be collective, so every rank makes them."""
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        handed = [a.value if isinstance(a, ast.keyword) else a for a in [*call.args, *call.keywords]]
        if _root(call.func) == trainer or any(isinstance(a, ast.Name) and a.id == trainer for a in handed):
            return True
    return False


def _root(node) -> str | None:
    """The name an attribute chain starts from: `trainer` for `trainer.strategy.barrier`,
    `trainer.callback_metrics["loss"].item`; `open` for `open(path).read`."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _after_fit(body: list[Piece], guards: list[bool], trainer: str) -> list[bool]:
    """Trainer: what follows `trainer.fit(...)` and does not use the Trainer runs on rank 0 alone,
    as it ran once in the notebook process after the fork (reading what rank 0 wrote, saving once),
    unless a later statement that every rank runs reads a name it binds."""
    fit = next((i for i, p in enumerate(body) if _uses_trainer(p.node, trainer) and _fits(p.node, trainer)), None)
    if fit is None:
        return guards
    out, read = list(guards), set()
    for i in range(len(body) - 1, fit, -1):
        node = body[i].node
        out[i] = out[i] or not (_uses_trainer(node, trainer) or _bound(node) & read)
        read |= set() if out[i] else _names(node)
    return out


def _fits(node, trainer: str) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "fit"
               and isinstance(n.func.value, ast.Name) and n.func.value.id == trainer for n in ast.walk(node))


BROADCASTS = ("log_dir",)  # Trainer properties that broadcast from rank 0: every rank must read them


def _broadcasts_first(body: list[Piece], texts: dict[int, str], guards: list[bool], trainer: str, pieces: list[Piece]) -> tuple[list[Piece], list[bool]]:
    """A rank-0 statement that reads `trainer.log_dir` (a broadcast: on rank 0 alone it fails once
    the other ranks have exited) reads a name that every rank sets just before it."""
    out_body, out_guards = [], []
    for p, guard in zip(body, guards):
        reads = [n.attr for n in ast.walk(p.node) if isinstance(n, ast.Attribute) and n.attr in BROADCASTS
                 and isinstance(n.value, ast.Name) and n.value.id == trainer]
        for attr in dict.fromkeys(reads) if guard else ():
            name = _fresh(f"{trainer}_{attr}", pieces)
            line = f"{name} = {trainer}.{attr}  # a broadcast from rank 0: every rank takes part"
            out_body.append(Piece(p.cell, line, ast.parse(line).body[0]))
            out_guards.append(False)
            texts[id(p)] = re.sub(rf"(?<![\w.]){trainer}\.{attr}\b", name, texts.get(id(p), p.text))
        out_body.append(p)
        out_guards.append(guard)
    return out_body, out_guards


def _accelerate_main(body: list[Piece], launch: Piece, state: str) -> tuple[dict[int, str], list[bool], str]:
    texts = {id(launch): rewrite_notebook_launcher(launch)}
    return texts, _guarded(body, None, lambda p: p is launch), f"{state}.is_main_process"


def _main(pieces: list[Piece], start: int, anchor: int, plan: Plan) -> tuple[list[Piece], list[str]]:
    """(module-level statements, lines of `def main(args):`) from the cell of the anchor (the
    Trainer/Fabric construction, or notebook_launcher) on."""
    first = next(i for i, p in enumerate(pieces) if p.cell == pieces[anchor].cell)
    first = min(first, start)
    top = pieces[:first] + [p for p in pieces[first:] if isinstance(p.node, HOISTED)]
    body = [p for p in pieces[first:] if not isinstance(p.node, HOISTED)]
    head = []
    if plan.kind == "accelerate":
        state = _fresh("state", pieces)
        texts, guards, rank0 = _accelerate_main(body, pieces[anchor], state)
        head.append(f"{state} = PartialState(cpu=args.cpu)  # this process's place in the launch; the Accelerator joins it")
    else:
        texts, guards, rank0 = _lightning_main(body, pieces[anchor], plan)
        if plan.kind == "trainer" and _target(pieces[anchor]):
            body, guards = _broadcasts_first(body, texts, guards, _target(pieces[anchor]), pieces)
    lines = _main_body(body, texts, guards, rank0)
    stored = set().union(*(_bound(p.node) for p in body)) if body else set()
    shared = sorted(stored & _free_reads(top))
    head[:0] = [f"global {', '.join(shared)}"] if shared else []
    return top, head + lines


ACCELERATE_USAGE = ("`accelerate launch` starts the processes: the number of processes and machines and the mixed "
                    "precision are its options (--num_processes, --num_machines, --mixed_precision), not this script's.")


def _args_function(plan: Plan, notebook: str) -> str:
    usage = f" {ACCELERATE_USAGE}" if plan.kind == "accelerate" else ""
    lines = [
        "def parse_args(argv=None):",
        f'    parser = argparse.ArgumentParser(description="Training exported from {notebook} by nbrefactor.{usage}")',
    ]
    for o in plan.options:
        kind = ", type=_devices" if o.name == "devices" else ", type=int" if o.name == "num_nodes" else ""
        kind = ', action="store_true"' if isinstance(o.default, bool) else kind
        note = f": {o.note}" if o.note and isinstance(o.default, bool) else f" ({o.note})" if o.note else ""
        what = o.help or f"{o.name} of the {plan.kind.capitalize()}"
        help_ = f"{what} (default: {o.default!r}{note})".replace("%", "%%")
        lines.append(f"    parser.add_argument({o.flag!r}{kind}, default={o.default!r}, help={help_!r})")
    lines.append("    return parser.parse_args(argv)")
    return "\n".join(lines)


DEVICES_TYPE = '''def _devices(text):
    """`--devices 2` is a number of devices, `--devices 0,1` or `auto` are given as written."""
    return int(text) if text.isdigit() else text'''


ACCELERATE_HEADER = [
    "# Run it with `accelerate launch`, which starts the processes: their number, the machines and the mixed precision",
    "# are its options (--num_processes, --num_machines, --mixed_precision); `nbrefactor export --engine accelerate`",
    "# prints the commands. --cpu keeps the processes on the CPU (a machine without GPUs needs it).",
]


def render(notebook: str, pieces: list[Piece], plan: Plan, start: int, anchor: int) -> str:
    top, main_lines = _main(pieces, start, anchor, plan)
    cells = sorted({p.cell for p in pieces})
    header = [
        f"# Exported by `nbrefactor export` from {notebook}, cells {', '.join(map(str, cells))}.",
        "# Edit the notebook and export again; `nbrefactor export --check` says when this file is stale.",
        *(ACCELERATE_HEADER if plan.kind == "accelerate" else []),
        *plan.notes,
    ]
    imports = "import argparse" + ("\n\nfrom accelerate import PartialState" if plan.kind == "accelerate" else "")
    parts = ["\n".join(header), imports]
    for cell in dict.fromkeys(p.cell for p in top):
        parts.append(f"# cell {cell}\n" + "\n".join(p.text for p in top if p.cell == cell).lstrip("\n"))
    if plan.default("devices") is not None:
        parts.append(DEVICES_TYPE)
    if plan.kind == "fabric":
        parts.append(LAUNCHER)
    parts.append(_args_function(plan, notebook))
    parts.append("def main(args):\n" + _indent("\n".join(main_lines)))
    parts.append('if __name__ == "__main__":\n    main(parse_args())')
    return "\n\n\n".join(parts) + "\n"


def export_script(notebook: str, cells: list[tuple[int, str]], kind: str, start: int | None = None) -> tuple[str, Plan]:
    """(script text, plan) for the code cells (original number, source) of a fixed notebook.

    `kind` is "trainer", "fabric" or "accelerate"; `start`, if given, is the cell number where main
    begins at the latest (the first launch's cell)."""
    plan = Plan(kind)
    pieces = read_cells(cells, plan)
    first = next((i for i, p in enumerate(pieces) if start is not None and p.cell >= start), len(pieces))
    if kind == "accelerate":
        launch, call = find_notebook_launcher(pieces)
        plan_accelerate(pieces, call, plan)
        return render(notebook, pieces, plan, first, launch), plan
    ctor, call = find_constructor(pieces)
    expected = "Trainer" if kind == "trainer" else "Fabric"
    if _callee(call) != expected:
        raise ExportError(f"the notebook launches with {kind} but builds a {_callee(call)}")
    plan_options(call, plan)
    return render(notebook, pieces, plan, first, ctor), plan


# --- where a script line came from ---------------------------------------------------------------

WRITTEN_BY_EXPORT = ("def _devices(text):", "def launcher(fabric):", "def parse_args(argv=None):", "def main(args):", 'if __name__ == "__main__":')


def line_map(script: str, cells: dict[int, str]) -> dict[int, tuple[int, int]]:
    """Script line (1-based) -> (cell number, line in that cell) for the lines copied from a cell.

    `cells` are the exported cells' sources by number. Each line below a `# cell N` marker is looked
    up in cell N by its text, in order; lines export wrote itself (the rewritten Trainer/Fabric
    call, rank-0 guards, parse_args, the launcher) map to nothing."""
    out: dict[int, tuple[int, int]] = {}
    cell, lines, cursor = None, [], 0
    for number, text in enumerate(script.split("\n"), 1):
        marker = text.strip()
        if marker.startswith("# cell ") and marker[7:].isdigit():
            cell, cursor = int(marker[7:]), 0
            lines = [line.strip() for line in cells.get(cell, "").split("\n")]
            continue
        if text.startswith(WRITTEN_BY_EXPORT):
            cell = None
        if cell is None or not marker or marker not in lines[cursor:]:
            continue
        cursor = lines.index(marker, cursor) + 1
        out[number] = (cell, cursor)
    return out
