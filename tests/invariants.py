"""DESIGN.md's invariants for a fix, asserted the same way on golden cases, fuzzed notebooks and
the real-notebook gauntlet."""

from __future__ import annotations

import json

import libcst as cst

from codemods.gate import new_unbound
from nbrefactor.checker import check_notebook
from nbrefactor.config import Selection
from nbrefactor.fixer import FixResult, fix_notebook
from nbrefactor.notebook.join import join
from nbrefactor.notebook.model import read_notebook


def assert_names_bound(before, after) -> None:
    """The semantic gate as an invariant: run in cell order, the fixed notebook reads no name
    unbound that the original read bound (top level, and the free names of every notebook function
    at the time it is called)."""
    broken = new_unbound(join(before).code, join(after).code)
    assert not broken, f"the fix leaves names unbound: {[(u.name, u.reader, u.line) for u in broken]}"


def assert_fix_invariants(original: str, result: FixResult, **options) -> None:
    """Nothing but changed code cells differs; ids stay; only reported cells go; the result
    parses; fixing again changes nothing; the result is clean of the rules it fixed."""
    if not result.changed:
        assert result.fixed == original, "a notebook that needs nothing must come back byte for byte"
        return
    fixed_nb = read_notebook(result.path, result.fixed.encode())  # its own suffix: ipynb or text
    fixed_code = join(fixed_nb).code
    cst.parse_module(fixed_code)
    assert_names_bound(read_notebook(result.path, original.encode()), fixed_nb)
    again = fix_notebook(fixed_nb, **options)
    assert again.fixed == result.fixed, "fix is not idempotent"
    remaining = {d.code for d in check_notebook(fixed_nb, Selection()).diagnostics}
    fixed_codes = {c.code for c in result.changes}
    # NBR201/NBR101 may stay reported where only some of the data or CUDA work could move.
    assert not (fixed_codes - {"NBR201", "NBR101"}) & remaining, remaining
    if not original.lstrip().startswith("{"):
        return  # text notebooks: the cell-level checks below are for .ipynb JSON
    before, after = json.loads(original), json.loads(result.fixed)
    assert {k: v for k, v in before.items() if k != "cells"} == {k: v for k, v in after.items() if k != "cells"}
    removed = {before["cells"][n - 1].get("id", n - 1) for n in result.deleted_cells}
    by_id = {c.get("id", i): c for i, c in enumerate(after["cells"])}
    if all("id" in c for c in before["cells"]):
        assert [c["id"] for c in after["cells"]] == [c["id"] for c in before["cells"] if c["id"] not in removed]
        for cell in before["cells"]:
            new = by_id.get(cell["id"])
            if new is None:
                assert cell["id"] in removed and cell["cell_type"] == "code", f"cell {cell['id']} vanished unreported"
            elif new["source"] == cell["source"]:
                assert new == cell, f"untouched cell {cell['id']} changed"
            else:
                assert new["cell_type"] == "code" and new["metadata"] == cell["metadata"]
                assert new.get("outputs") == [] and new.get("execution_count") is None
    else:  # nbformat < 4.5: no ids; markdown and raw cells must all survive unchanged, in order
        kept = [c for c in after["cells"] if c["cell_type"] != "code"]
        assert kept == [c for c in before["cells"] if c["cell_type"] != "code"]
