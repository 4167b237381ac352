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

from codemods.fixes import Options, fix_module

# A plain code-cell marker followed only by blank lines up to the next marker (or the end).
_EMPTY_CELL = re.compile(r"^# %%[ \t]*\n(?:[ \t]*\n)*(?=# %%|\Z)", re.MULTILINE)


def _drop_empty_cells(code: str, before: str) -> str:
    kept = len(_EMPTY_CELL.findall(before))
    if len(_EMPTY_CELL.findall(code)) <= kept:
        return code
    return _EMPTY_CELL.sub("", code)


class _NotebookCommand(CodemodCommand):
    """Applies the declared fixes (`codemods.fixes.FIXES`) named in `FIXES_USED`, all of them when
    None, pass after pass, through the same semantic gate as `nbrefactor fix`."""

    FIXES_USED: tuple[str, ...] | None = None

    def __init__(self, context, unsafe_fixes: bool = False) -> None:
        super().__init__(context)
        self.unsafe_fixes = unsafe_fixes

    @staticmethod
    def add_args(arg_parser: argparse.ArgumentParser) -> None:
        arg_parser.add_argument("--unsafe-fixes", action="store_true", help="also apply unsafe fixes")

    def transform_module_impl(self, tree: cst.Module) -> cst.Module:
        only = None if self.FIXES_USED is None else frozenset(self.FIXES_USED)
        before = tree.code
        after = before
        for step in fix_module(tree, Options(unsafe_fixes=self.unsafe_fixes, only=only)):
            after = step.code  # printed once by the step (printing a large module is not cheap)
        if after == before:
            raise SkipFile("nothing to fix")
        return cst.parse_module(_drop_empty_cells(after, before))


class NotebookStrategyCommand(_NotebookCommand):
    DESCRIPTION = "NBR401: ddp/ddp_spawn -> ddp_notebook, DDPStrategy(start_method='fork')."
    FIXES_USED = ("notebook strategy",)


class LightningImportCommand(_NotebookCommand):
    DESCRIPTION = "NBR102: import Lightning before the first torch.cuda.is_available()."
    FIXES_USED = ("Lightning before the CUDA probe",)


class WrapTrainingCommand(_NotebookCommand):
    DESCRIPTION = "NBR301/NBR302 (+NBR201/NBR101): Fabric training into def train(fabric) + fabric.launch(train)."
    FIXES_USED = ("training into train(fabric)",)


class FixNotebookCommand(_NotebookCommand):
    DESCRIPTION = "Every nbrefactor fix, in the order and through the gate `nbrefactor fix` uses."
