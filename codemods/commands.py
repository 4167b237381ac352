"""The codemods as LibCST commands, for jupytext py:percent notebooks:

    python -m libcst.tool codemod commands.FixNotebookCommand notebook.py
    python -m libcst.tool codemod commands.WrapTrainingCommand --unsafe-fixes notebook.py

The same transforms as `nbrefactor fix`, applied to a module whose cells are marked by jupytext's
`# %%` lines instead of nbrefactor's own markers. Cells a transform empties are removed.
"""

from __future__ import annotations

import argparse
import re

import libcst as cst
from libcst.codemod import CodemodCommand, SkipFile

from codemods import local_fixes
from codemods.cells import rebuild
from codemods.facts import analyse
from codemods.wrap_training import wrap_training

# A plain code-cell marker followed only by blank lines up to the next marker (or the end).
_EMPTY_CELL = re.compile(r"^# %%[ \t]*\n(?:[ \t]*\n)*(?=# %%|\Z)", re.MULTILINE)


def _drop_empty_cells(code: str, before: str) -> str:
    kept = len(_EMPTY_CELL.findall(before))
    if len(_EMPTY_CELL.findall(code)) <= kept:
        return code
    return _EMPTY_CELL.sub("", code)


class _NotebookCommand(CodemodCommand):
    def __init__(self, context, unsafe_fixes: bool = False) -> None:
        super().__init__(context)
        self.unsafe_fixes = unsafe_fixes

    @staticmethod
    def add_args(arg_parser: argparse.ArgumentParser) -> None:
        arg_parser.add_argument("--unsafe-fixes", action="store_true", help="also apply unsafe fixes")

    def step(self, tree: cst.Module) -> cst.Module:
        raise NotImplementedError

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        current = tree
        for _ in range(4):
            new = self.step(current)
            if new.code == current.code:
                break
            current = cst.parse_module(new.code)
        if current.code == tree.code:
            raise SkipFile("nothing to fix")
        return cst.parse_module(_drop_empty_cells(current.code, tree.code))


class NotebookStrategyCommand(_NotebookCommand):
    DESCRIPTION = "NBR401: ddp/ddp_spawn -> ddp_notebook, DDPStrategy(start_method='fork')."

    def step(self, tree):
        replacements, _ = local_fixes.notebook_strategies(analyse(tree))
        return local_fixes.apply_replacements(tree, replacements)


class LightningImportCommand(_NotebookCommand):
    DESCRIPTION = "NBR102: import Lightning before the first torch.cuda.is_available()."

    def step(self, tree):
        plan, _ = local_fixes.lightning_before_probe(analyse(tree))
        return rebuild(tree, plan) if plan else tree


class WrapTrainingCommand(_NotebookCommand):
    DESCRIPTION = "NBR301/NBR302 (+NBR201/NBR101): Fabric training into def train(fabric) + fabric.launch(train)."

    def step(self, tree):
        return wrap_training(analyse(tree), allow_unsafe=self.unsafe_fixes).module


class FixNotebookCommand(_NotebookCommand):
    DESCRIPTION = "Every nbrefactor fix, as `nbrefactor fix` applies them."

    def step(self, tree):
        facts = analyse(tree)
        replacements, _ = local_fixes.notebook_strategies(facts)
        if replacements:
            return local_fixes.apply_replacements(tree, replacements)
        plan, _ = local_fixes.lightning_before_probe(facts)
        if plan:
            return rebuild(tree, plan)
        return wrap_training(facts, allow_unsafe=self.unsafe_fixes).module
