"""Trainer: move data handed to `trainer.fit/validate/test/predict` into dataloader hooks (NBR201).

The layout it writes is the full example of Lightning's "Interactive Notebooks" page:

    class LitModel(L.LightningModule):
        ...
        def prepare_data(self):             # downloads, once, before the processes start
            torchvision.datasets.MNIST(".", download=True)

        def setup(self, stage=None):        # datasets more than one hook needs, once per process
            self.dataset = torchvision.datasets.MNIST(".", transform=transform)
            self.train_set, self.val_set = random_split(self.dataset, [55000, 5000])

        def train_dataloader(self):         # loaders, built in each training process
            return DataLoader(self.train_set, batch_size=batch_size)

    trainer.fit(model)

The hooks go into the LightningModule when its class is defined in the notebook; when it is
imported, into a generated `LightningDataModule`, and the launch becomes
`trainer.fit(model, datamodule=datamodule)`. Transforms, batch sizes and other top-level names stay
where they are: the hooks read them as globals. Data that other cells also read (a cell that shows
a sample) is kept at top level for them, only with --unsafe-fixes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst

from codemods import names as N
from codemods.cells import BodyPlan, first_in_block, split_leading_lines, without_cell_part
from codemods.facts import NotebookFacts, data_chain, lightning_import

HOOK_FOR = {  # launch method -> hooks for its data arguments, by position after the model
    "fit": ("train_dataloader", "val_dataloader"),
    "validate": ("val_dataloader",),
    "test": ("test_dataloader",),
    "predict": ("predict_dataloader",),
}
KEYWORD_HOOK = {"train_dataloaders": "train_dataloader", "val_dataloaders": "val_dataloader"}
DATA_KEYWORDS = ("train_dataloaders", "val_dataloaders", "dataloaders")


@dataclass
class HookPlan:
    """The data one launch hands over, hook by hook."""

    hooks: dict[str, str] = field(default_factory=dict)  # hook name -> loader variable
    launches: list = field(default_factory=list)


class _SelfNames(cst.CSTTransformer):
    """`dataset` -> `self.dataset` for the names `setup()` stores on the object."""

    def __init__(self, names: set[str]):
        self.names = names

    def leave_Name(self, original: cst.Name, updated: cst.Name):
        if updated.value in self.names:
            return cst.Attribute(cst.Name("self"), cst.Name(updated.value))
        return updated

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        node.value.visit(self)  # never rewrite the attribute name itself
        return False

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute):
        value = original.value.visit(self)
        return updated.with_changes(value=value)

    def visit_Arg(self, node: cst.Arg) -> bool:
        return True

    def leave_Arg(self, original: cst.Arg, updated: cst.Arg):
        return updated.with_changes(keyword=original.keyword)


class _NoDownload(cst.CSTTransformer):
    """Drop `download=True` from dataset constructors: `prepare_data` downloads instead."""

    def __init__(self):
        self.downloads: list[cst.Call] = []

    def leave_Call(self, original: cst.Call, updated: cst.Call):
        arg = N.call_arg(updated, "download")
        if arg is None or not (isinstance(arg.value, cst.Name) and arg.value.value == "True"):
            return updated
        keep = [a for a in updated.args if not (a.keyword is not None and a.keyword.value in ("transform", "target_transform", "transforms"))]
        self.downloads.append(updated.with_changes(args=_fix_commas(keep)))
        return updated.with_changes(args=_fix_commas([a for a in updated.args if a is not arg]))


def _fix_commas(args: list[cst.Arg]) -> list[cst.Arg]:
    if not args:
        return args
    return [*args[:-1], args[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)]


def _launch_method(lp) -> str | None:
    return lp.kind.split(".", 1)[1] if lp.kind.startswith("trainer.") and lp.via is None else None


def _data_arguments(call: cst.Call, method: str) -> list[tuple[str, cst.Arg]]:
    out = []
    positional = [a for a in call.args if a.keyword is None and not a.star]
    model_by_keyword = N.call_arg(call, "model") is not None
    data_positional = positional if model_by_keyword else positional[1:]
    for hook, arg in zip(HOOK_FOR[method], data_positional):
        out.append((hook, arg))
    for arg in call.args:
        if arg.keyword is None:
            continue
        if arg.keyword.value in KEYWORD_HOOK and method == "fit":
            out.append((KEYWORD_HOOK[arg.keyword.value], arg))
        elif arg.keyword.value == "dataloaders" and method != "fit":
            out.append((HOOK_FOR[method][0], arg))
    return out


def _chain(facts: NotebookFacts, name: str, before: int) -> list[int]:
    """The top-level data statements that build `name` (the loader and the datasets it reads)."""
    return sorted({build.statement for build, _ in data_chain(facts.data, [name], before)})


def _lightning_base(facts: NotebookFacts) -> tuple[str, cst.BaseStatement | None]:
    """How to spell LightningDataModule here, and an import to add if nothing spells it."""
    for name, v in facts.env.items():
        if v.kind == "module" and v.qname == "lightning.pytorch.LightningDataModule":
            return name, None
    for name, v in facts.env.items():
        if v.kind == "module" and v.qname in ("lightning", "lightning.pytorch"):
            return f"{name}.LightningDataModule", None
    # `from pytorch_lightning import Trainer` -> import it from the same package
    package = (lightning_import(facts) or "lightning.pytorch").split(".")[0]
    module = "pytorch_lightning" if package == "pytorch_lightning" else "lightning.pytorch"
    return "LightningDataModule", cst.parse_statement(f"from {module} import LightningDataModule\n")


def _method(name: str, body: list[cst.BaseStatement], params: str = "self") -> cst.FunctionDef:
    fn = cst.parse_statement(f"def {name}({params}):\n    pass\n")
    return fn.with_changes(body=fn.body.with_changes(body=first_in_block(body)), leading_lines=[cst.EmptyLine(indent=False)])


def _returning(stmt: cst.BaseStatement, name: str) -> cst.BaseStatement:
    """`loader = DataLoader(...)` -> `return DataLoader(...)` when it is the loader's own line."""
    if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1 and isinstance(stmt.body[0], cst.Assign):
        assign = stmt.body[0]
        if len(assign.targets) == 1 and isinstance(assign.targets[0].target, cst.Name) and assign.targets[0].target.value == name:
            return stmt.with_changes(body=[cst.Return(assign.value)])
    return stmt


@dataclass
class Outcome:
    plan: BodyPlan
    replacements: dict[int, cst.CSTNode]
    changes: list[tuple[str, int, str]]
    refused: list[str]


def data_into_hooks(facts: NotebookFacts, *, allow_unsafe: bool) -> Outcome:
    out = Outcome(BodyPlan(), {}, [], [])
    launches = [lp for lp in facts.launches if _launch_method(lp)]
    if not launches:
        return out
    # Which model each launch trains, and which loaders it hands over.
    per_model: dict[str, list] = {}
    for lp in launches:
        model = N.call_arg(lp.node, "model", 0)
        if model is None or not isinstance(model.value, cst.Name):
            continue
        data = [(hook, arg) for hook, arg in _data_arguments(lp.node, _launch_method(lp))
                if isinstance(arg.value, cst.Name) and _chain(facts, arg.value.value, lp.statement)]
        if data:
            per_model.setdefault(model.value.value, []).append((lp, data))
    statements = facts.statements
    # What moves, for every model at once: statements that other (kept) code still reads stay at
    # top level as well (an unsafe fix), and so does everything they read in turn.
    given: dict[str, tuple[str, ...]] = {}  # class name -> the hook methods it was given
    every_chain: set[int] = set()
    every_launch: set[int] = {lp.statement for items in per_model.values() for lp, _ in items}
    for items in per_model.values():
        for lp, data in items:
            for _, arg in data:
                every_chain |= set(_chain(facts, arg.value.value, lp.statement))
    defined_in_chains = set().union(*(statements[i].defines for i in every_chain)) if every_chain else set()
    used_elsewhere: set[str] = set()
    for st in statements:
        if st.index not in every_chain and st.index not in every_launch:
            used_elsewhere |= st.uses & defined_in_chains
    if used_elsewhere and not allow_unsafe:
        return out  # stays reported: other cells read this data (an unsafe fix)
    kept = {i for i in every_chain if statements[i].defines & used_elsewhere}
    # What kept statements read is kept too: from the last statement back, with what the kept
    # statements after it read gathered on the way (not every kept statement per statement).
    first_kept = sorted(kept, reverse=True)
    read_after: set[str] = set()
    p = 0
    for i in sorted(every_chain, reverse=True):
        while p < len(first_kept) and first_kept[p] > i:
            read_after |= statements[first_kept[p]].uses
            p += 1
        if statements[i].defines & read_after:
            if i not in kept:
                kept.add(i)
                read_after |= statements[i].uses  # kept now, and after every statement still to come
    for model_name, items in per_model.items():
        value = facts.env.get(model_name)
        cls_node = None
        if value is not None and value.kind == "lightning_module" and isinstance(value.node, cst.Call) and isinstance(value.node.func, cst.Name):
            cls_value = facts.env.get(value.node.func.value)
            if cls_value is not None and cls_value.kind == "class":
                cls_node = cls_value.node
        hooks: dict[str, list[int]] = {}
        loader_of: dict[str, str] = {}
        for lp, data in items:
            for hook, arg in data:
                name = arg.value.value
                if hook in hooks and loader_of[hook] != name:
                    out.refused.append(f"not rewritten: `{hook}` would get two different loaders (`{loader_of[hook]}`, `{name}`); build them in the hooks by hand")
                    return out
                hooks[hook] = _chain(facts, name, lp.statement)
                loader_of[hook] = name
        if cls_node is not None:
            existing = {s.name.value for s in cls_node.body.body if isinstance(s, cst.FunctionDef)}
            clash = (set(hooks) | {"setup", "prepare_data"}) & existing
            if clash:
                out.refused.append(f"not rewritten: `{cls_node.name.value}` already defines {', '.join(sorted(clash))}; move the data into it by hand")
                return _only_refusals(out)
        moved = sorted(set().union(*hooks.values()))
        chains = [set(chain) for chain in hooks.values()]
        shared = {i for i in moved if sum(i in chain for chain in chains) > 1}
        shared_names = set().union(*(statements[i].defines for i in shared)) if shared else set()
        to_self = _SelfNames(shared_names)
        no_download = _NoDownload()
        methods: list[cst.FunctionDef] = []
        setup_body = [without_cell_part(statements[i].node).visit(no_download).visit(to_self) for i in sorted(shared)]
        hook_bodies = {}
        for hook in ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader"):
            if hook not in hooks:
                continue
            own = [i for i in hooks[hook] if i not in shared]
            body = [without_cell_part(statements[i].node).visit(no_download).visit(to_self) for i in own]
            loader = loader_of[hook]
            if body:
                body[-1] = _returning(body[-1], loader)
            if not body or not isinstance(body[-1], cst.SimpleStatementLine) or not isinstance(body[-1].body[0], cst.Return):
                body.append(cst.parse_statement(f"return {'self.' if loader in shared_names else ''}{loader}\n"))
            hook_bodies[hook] = body
        if no_download.downloads:
            unique: dict[str, cst.Call] = {}
            for c in no_download.downloads:  # train and validation often download the same files
                unique.setdefault(cst.Module([]).code_for_node(c), c)
            methods.append(_method("prepare_data", [cst.SimpleStatementLine([cst.Expr(c)]) for c in unique.values()]))
        if setup_body:
            methods.append(_method("setup", setup_body, "self, stage=None"))
        methods += [_method(h, b) for h, b in hook_bodies.items()]

        cell_of = statements[moved[0]].cell
        signature = tuple(cst.Module([]).code_for_node(m) for m in methods)
        if cls_node is not None and _inherits_same_hooks(cls_node, given, signature):
            given[cls_node.name.value] = signature
            _without_data_arguments(out, items, None)
            continue
        if cls_node is not None:
            given[cls_node.name.value] = signature
            cls_index = next(st.index for st in statements if st.node is cls_node)
            new_cls = cls_node.with_changes(body=cls_node.body.with_changes(body=[*cls_node.body.body, *methods]))
            out.plan.replace(cls_index, [new_cls])
            target = f"{cls_node.name.value}'s hooks"
            datamodule = None
        else:
            base, extra_import = _lightning_base(facts)
            datamodule = "datamodule" if "datamodule" not in facts.env else "notebook_datamodule"
            dm_cls = cst.parse_statement(f"class NotebookDataModule({base}):\n    pass\n")
            methods[0] = methods[0].with_changes(leading_lines=[])
            dm_cls = dm_cls.with_changes(body=dm_cls.body.with_changes(body=methods))
            # The class goes where the first statement that leaves was (after the last one that
            # stays, when every one of them stays for other cells).
            first = next((i for i in moved if i not in kept), max(moved))
            head = [extra_import] if extra_import is not None else []
            kept_first = [statements[first].node] if first in kept else []
            bare = not kept_first and split_leading_lines(statements[first].node)[0]
            dm_cls = dm_cls.with_changes(leading_lines=[] if bare else [cst.EmptyLine()])
            instance = cst.parse_statement(f"{datamodule} = NotebookDataModule()\n").with_changes(leading_lines=[cst.EmptyLine()])
            out.plan.replace(first, [*kept_first, *head, dm_cls, instance])
            target = "a generated LightningDataModule"
        for i in moved:
            if i not in kept and out.plan.edits.get(i) is None:
                out.plan.remove(i)
        _without_data_arguments(out, items, datamodule)
        hook_list = ", ".join(m.name.value for m in methods)
        out.changes.append(("NBR201", cell_of, f"moved the data of {_cells(sorted({statements[i].cell for i in moved}))} into {target} ({hook_list})"))
    if used_elsewhere and out.changes:
        names = ", ".join(f"`{n}`" for n in sorted(used_elsewhere))
        out.changes.append(("NBR201", statements[min(kept)].cell, f"kept {names} at top level too, for the cells that read it"))
    return out


def _inherits_same_hooks(cls_node: cst.ClassDef, given: dict, signature: tuple) -> bool:
    """A subclass of a notebook class that already got these very hooks inherits them."""
    return any(isinstance(b.value, cst.Name) and given.get(b.value.value) == signature for b in cls_node.bases)


def _without_data_arguments(out: Outcome, items, datamodule: str | None) -> None:
    """The launches stop passing loaders (and pass `datamodule=` when one was generated)."""
    for lp, data in items:
        drop = {id(arg) for _, arg in data}
        args = [a for a in lp.node.args if id(a) not in drop]
        if datamodule is not None:
            args.append(cst.Arg(cst.Name(datamodule), keyword=cst.Name("datamodule"),
                                equal=cst.AssignEqual(cst.SimpleWhitespace(""), cst.SimpleWhitespace(""))))
        out.replacements[id(lp.node)] = lp.node.with_changes(args=_fix_commas(args))


def _only_refusals(out: Outcome) -> Outcome:
    """A refusal undoes everything planned so far: half-moved data is worse than none."""
    return Outcome(BodyPlan(), {}, [], out.refused)


def _cells(cells: list[int]) -> str:
    numbers = [c + 1 for c in cells]
    return f"cell {numbers[0]}" if len(numbers) == 1 else "cells " + ", ".join(map(str, numbers))
