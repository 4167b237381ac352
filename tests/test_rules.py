"""Every rule's VALID and INVALID examples are its tests (Fixit's model), checked against the
notebook's own cells: cell number over all cells, row and column inside the cell."""

from __future__ import annotations

import re

import pytest

from codemods.rules import ALL_RULES, Valid
from nbrefactor.checker import check_notebook
from nbrefactor.config import Selection
from nbrefactor.discover import read_script
from nbrefactor.notebook.model import notebook_from_cells, split_example


def _findings(rule, text, context="notebook"):
    """A notebook's cells split at `# %%`; a script (`context="script"`) is the text as one file."""
    if context == "script":
        nb = read_script("<example>.py", text.lstrip("\n").encode("utf-8"))
    else:
        nb = notebook_from_cells(split_example(text))
    return check_notebook(nb, Selection(select=(rule.code,))).diagnostics


def _valid(example) -> Valid:
    return example if isinstance(example, Valid) else Valid(example)


VALID = [pytest.param(r, i, _valid(code), id=f"{r.code}-valid-{i}") for r in ALL_RULES for i, code in enumerate(r.VALID)]
INVALID = [pytest.param(r, i, case, id=f"{r.code}-invalid-{i}") for r in ALL_RULES for i, case in enumerate(r.INVALID)]


@pytest.mark.parametrize("rule, i, code", VALID)
def test_valid_examples_have_no_findings(rule, i, code):
    assert _findings(rule, code.code, code.context) == []


@pytest.mark.parametrize("rule, i, case", INVALID)
def test_invalid_examples_are_found_where_they_are(rule, i, case):
    assert case.context in rule.contexts, f"{rule.code} does not apply to a {case.context}"
    found = _findings(rule, case.code, case.context)
    places = [(d.cell, d.row, d.column) for d in found]
    assert case.at in places, f"expected {rule.code} at cell {case.at[0]}:{case.at[1]}:{case.at[2]}, found {places}"
    d = next(d for d in found if (d.cell, d.row, d.column) == case.at)
    assert case.message_contains in d.message
    assert d.code == rule.code and d.applicability == rule.applicability.value


def test_every_rule_has_examples_and_docs():
    codes = [r.code for r in ALL_RULES]
    assert len(codes) == len(set(codes)), "a rule code is used twice"
    for r in ALL_RULES:
        assert re.fullmatch(r"NBR\d{3}", r.code)
        assert r.VALID and r.INVALID, f"{r.code} needs VALID and INVALID examples"
        docs = r.docs()
        for section in ("## What it does", "## Why is this bad?", "## Example", "## Use instead", "## Fix safety"):
            assert section in docs, f"{r.code} docs lack {section!r}"


def test_every_rule_says_where_it_applies():
    for r in ALL_RULES:
        assert r.contexts and set(r.contexts) <= {"notebook", "script"}, r.code
        assert r.docs().startswith(f"Applies to: {r.applies_to()}."), r.code
        assert r.context_reason, f"{r.code} docs must say why it does (not) apply to the other context"
