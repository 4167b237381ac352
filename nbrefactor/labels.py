"""Honest fix labels: which fix `nbrefactor fix` will actually apply to each finding.

A rule only says whether its findings *may* have a fix (`fix_availability`: always, sometimes,
none). Whether a given finding is fixed, and with which flags, depends on the notebook: the
fixer refuses layouts it cannot rewrite soundly, and some fixes only run with `--unsafe-fixes`
or `--devices N`. The one answer that is always true is the fixer's own, so it is asked: the
notebook is fixed in memory (plain, then with `--unsafe-fixes`, then with `--devices N` where
NBR402 remains) and a finding the fix removes is labelled with the first mode that removed it:

- `safe`: plain `nbrefactor fix` fixes it;
- `unsafe`: only `nbrefactor fix --unsafe-fixes` does;
- `safe` or `unsafe` with `fix_needs="--devices N"`: the fix needs that option;
- `none`: no invocation fixes it (the fixer refuses it, or the rule has no fix).

Findings are matched across a fix by a key that survives the code moving between cells: the
rule code, the message with cell numbers and spacing normalised, and the flagged source text
with its spacing normalised. Nothing is run for notebooks without findings, or whose findings
all belong to rules without a fix.
"""

from __future__ import annotations

import dataclasses
import re

from nbrefactor.checker import Diagnostic
from nbrefactor.config import Selection
from nbrefactor.notebook.model import Notebook

DEVICES_FLAG = "--devices N"
_CELL_NUMBER = re.compile(r"\b(cells?)\s+\d+(?:\s*(?:,|and|-)\s*\d+)*")


def _snippet(d: Diagnostic, notebook: Notebook, lines_of: dict[int, list[str]] | None = None) -> str:
    cells = notebook.cells
    if not 1 <= d.cell <= len(cells):
        return ""
    if lines_of is None:
        lines = cells[d.cell - 1].source.split("\n")
    else:  # one split per cell for many findings (a split per finding is quadratic in a big cell)
        lines = lines_of.get(d.cell)
        if lines is None:
            lines = lines_of[d.cell] = cells[d.cell - 1].source.split("\n")
    if not 1 <= d.row <= len(lines):
        return ""
    if d.end_row == d.row:
        text = lines[d.row - 1][d.column - 1 : d.end_column - 1]
    else:
        text = "\n".join([lines[d.row - 1][d.column - 1 :], *lines[d.row : d.end_row - 1], lines[min(d.end_row, len(lines)) - 1][: d.end_column - 1]])
    return " ".join(text.split())


def finding_key(d: Diagnostic, notebook: Notebook, lines_of: dict[int, list[str]] | None = None) -> tuple[str, str, str]:
    """What identifies a finding before and after a fix moved its code (see the module doc).
    `lines_of`: a dict to keep the notebook's cells split into lines across calls."""
    message = " ".join(_CELL_NUMBER.sub(r"\1 #", d.message).split())
    return d.code, message, _snippet(d, notebook, lines_of)


def _needs_devices() -> set[str]:
    """The rules some fix answers only when `--devices N` is given."""
    from codemods.fixes import FIXES

    return {code for fix in FIXES if fix.needs_devices for code in fix.codes}


def _fixable_rules() -> set[str]:
    from codemods.rules import ALL_RULES, FixAvailability

    return {r.code for r in ALL_RULES if r.fix_availability is not FixAvailability.NONE}


def _removed(diagnostics: list[Diagnostic], notebook: Notebook, result) -> list[bool]:
    """For each diagnostic of `notebook`, whether the fix `result` removed it.

    A finding is kept when one with the same key is left; failing that, one with the same code
    and message (another fix may have edited inside the flagged code: `Trainer(strategy="ddp")`
    keeps its NBR402 finding after NBR401's fix)."""
    after_lines: dict[int, list[str]] = {}
    before_lines: dict[int, list[str]] = {}
    left = [finding_key(d, result.after, after_lines) for d in result.remaining]
    keys = [finding_key(d, notebook, before_lines) for d in diagnostics]
    kept = [False] * len(diagnostics)
    used = [False] * len(left)
    # Each finding takes the first finding left with its key (then: its code and message) that no
    # earlier one took: queues by key, not a scan of every finding left per finding.
    for loose in (False, True):
        queues: dict[tuple, list[int]] = {}
        for j in range(len(left) - 1, -1, -1):  # reversed, so that pop() gives the first
            if not used[j]:
                queues.setdefault(left[j][:2] if loose else left[j], []).append(j)
        for i, key in enumerate(keys):
            if kept[i]:
                continue
            queue = queues.get(key[:2] if loose else key)
            if queue:
                kept[i] = used[queue.pop()] = True
    return [not k for k in kept]


def probe(
    notebook: Notebook,
    diagnostics: list[Diagnostic],
    selection: Selection,
    *,
    fixed_with: tuple[bool, int | None] | None = None,
) -> list[tuple[str, str | None]]:
    """(applicability, option needed) for each diagnostic of `notebook`, found by fixing it in
    memory: plain, with `--unsafe-fixes`, and with `--devices N` where a rule whose fix needs it
    (NBR402, NBR403, NBR305) is among them.

    `fixed_with=(unsafe_fixes, devices)` says the notebook is what `fix` with those flags left:
    the modes those flags already cover are not tried again, so the labels say what to add."""
    from nbrefactor.fixer import fix_notebook

    labels: list[tuple[str, str | None]] = [("none", None)] * len(diagnostics)
    fixable = _fixable_rules()
    todo = [i for i, d in enumerate(diagnostics) if d.code in fixable]
    unsafe_given, devices = fixed_with if fixed_with is not None else (False, None)
    modes = [(False, devices, "safe", None), (True, devices, "unsafe", None)]
    if devices is None:
        modes += [(False, 2, "safe", DEVICES_FLAG), (True, 2, "unsafe", DEVICES_FLAG)]
    for mode_unsafe, mode_devices, applicability, needs in modes:
        if not todo:
            break
        if fixed_with is not None and (mode_unsafe < unsafe_given or (mode_devices == devices and mode_unsafe == unsafe_given)):
            continue  # covered by what `fix` itself just did
        if needs and not any(diagnostics[i].code in _needs_devices() for i in todo):
            continue  # no finding here has a fix that `--devices` enables
        try:
            result = fix_notebook(notebook, unsafe_fixes=mode_unsafe, devices=mode_devices, selection=selection)
        except Exception:  # a fixer error is reported by `fix`; here only a label is lost
            continue
        if not result.changed:
            continue
        removed = _removed(diagnostics, notebook, result)
        for i in todo:
            if removed[i]:
                labels[i] = (applicability, needs)
        todo = [i for i in todo if not removed[i]]
    return labels


def label(check, selection: Selection) -> list[Diagnostic]:
    """The diagnostics of `check` (a `NotebookCheck`) with the applicability plain `fix`,
    `fix --unsafe-fixes` or `--devices N` will actually use (see the module doc)."""
    from nbrefactor.checker import reusing_checks

    diagnostics = check.diagnostics
    fixable = _fixable_rules()
    if not diagnostics or not any(d.code in fixable for d in diagnostics):
        return [dataclasses.replace(d, applicability="none") for d in diagnostics]
    from codemods.kept import keeping_structure

    notebook = check.notebook
    # The modes fix the same notebook: its checks and what its nodes hold are worked out once.
    with reusing_checks(check, selection=selection), keeping_structure():
        labels = probe(notebook, diagnostics, selection)
    return [dataclasses.replace(d, applicability=a, fix_needs=n) for d, (a, n) in zip(diagnostics, labels)]


def hint(d: Diagnostic) -> str:
    """What fixes a finding, in words, from its label (after `label` or `probe`)."""
    if d.applicability == "none":
        return f"needs a manual fix (see `nbrefactor rules {d.code}`)"
    flags = (["--unsafe-fixes"] if d.applicability == "unsafe" else []) + ([d.fix_needs] if d.fix_needs else [])
    return "fixable with `nbrefactor fix" + "".join(f" {f}" for f in flags) + "`"
