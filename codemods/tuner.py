"""The NBR503 fix (unsafe): `lr_find` on a Trainer that forks tunes on one CPU process instead.

`Tuner(trainer)` gets a copy of the `Trainer(...)` call with `accelerator="cpu", devices=1,
strategy="auto", logger=False` and no `callbacks`, so the search runs in the notebook process and
does not fork; `lr_find` restores the model's weights and sets its learning rate attribute there,
and the later forked `trainer.fit` trains with it. The statement that runs `lr_find` is wrapped in
`unittest.mock.patch("torch.cuda.is_available", return_value=False)`: the search saves and
restores the CUDA random state (`isolate_rng`), which initialises CUDA in the notebook process on
a GPU machine, and the forked processes could then not use CUDA. `scale_batch_size` gets no fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import libcst as cst

from codemods import names as N
from codemods.facts import NotebookFacts
from codemods.local_fixes import append_keyword
from codemods.rules.nbr503_tuner_with_forking_strategy import tuner_calls, why_no_fix
from codemods.walk import walk

if TYPE_CHECKING:
    from codemods.fixes import Edit

ONE_CPU_PROCESS = {"accelerator": '"cpu"', "devices": "1", "strategy": '"auto"', "logger": "False"}
DROPPED = ("num_nodes", "sync_batchnorm", "callbacks")  # several machines / processes; replaced by the search
GUARD = 'with unittest.mock.patch("torch.cuda.is_available", return_value=False):  # lr_find must not initialise CUDA before the fork\n    pass\n'


class _Replace(cst.CSTTransformer):
    def __init__(self, replacements: dict[int, cst.CSTNode]):
        self.replacements = replacements

    def on_leave(self, original, updated):
        return self.replacements.get(id(original), updated)


def one_cpu_process(trainer: cst.Call) -> cst.Call:
    """The `Trainer(...)` call with one CPU process: the device arguments replaced in place (or
    added last), the dropped ones removed."""
    args = [a for a in trainer.args if a.keyword is None or a.keyword.value not in DROPPED]
    last = trainer.args[-1] if trainer.args else None
    if args and last is not None and last.keyword is not None and last.keyword.value in DROPPED:
        # The last one went: its closing layout goes to the new last one.
        args[-1] = args[-1].with_changes(comma=last.comma, whitespace_after_arg=last.whitespace_after_arg)
    missing = dict(ONE_CPU_PROCESS)
    for i, a in enumerate(args):
        if a.keyword is not None and a.keyword.value in missing:
            args[i] = a.with_changes(value=cst.parse_expression(missing.pop(a.keyword.value)))
    call = trainer.with_changes(args=args)
    for keyword, value in missing.items():
        call = append_keyword(call, keyword, cst.parse_expression(value))
    return call


def _line_of(statement: cst.CSTNode, call: cst.Call) -> cst.SimpleStatementLine | None:
    """The innermost simple statement line in `statement` that holds `call`."""
    lines = [n for n in walk(statement) if isinstance(n, cst.SimpleStatementLine) and any(m is call for m in walk(n))]
    return lines[-1] if lines else None


def _guarded(line: cst.SimpleStatementLine, inner: dict[int, cst.CSTNode]) -> cst.FlattenSentinel:
    """`import unittest.mock` and the line (with `inner` replaced in it) under the CUDA guard; the
    line's leading comments (and cell marker) stay in front."""
    guard = cst.ensure_type(cst.parse_statement(GUARD), cst.With)
    body = line.visit(_Replace(inner)).with_changes(leading_lines=[])
    guard = guard.with_changes(body=guard.body.with_changes(body=[body]))
    imported = cst.parse_statement("import unittest.mock\n").with_changes(leading_lines=line.leading_lines)
    return cst.FlattenSentinel([imported, guard])


def tuner_fix(facts: NotebookFacts, options) -> Edit:
    from codemods.fixes import Edit  # codemods.fixes imports this module

    found = list(tuner_calls(facts))
    fixed = [t for t in found if why_no_fix(t, facts, found) is None]
    inner: dict[int, cst.CSTNode] = {}
    for t in fixed:
        inner[id(N.call_arg(t.tuner, "trainer", 0).value)] = one_cpu_process(t.trainer)
    edit = Edit()
    for t in fixed:
        line = _line_of(facts.statements[t.statement].node, t.call)
        if line is None or id(line) in edit.replacements:
            continue
        edit.replacements[id(line)] = _guarded(line, inner)
        edit.changes.append(("NBR503", t.call, f"`{t.method}` tunes on one CPU process (Trainer with {', '.join(f'{k}={v}' for k, v in ONE_CPU_PROCESS.items())}), without initialising CUDA"))
    for key, node in inner.items():  # a Tuner built in an earlier statement: replaced where it is
        edit.replacements.setdefault(key, node)
    return edit
