"""The real-notebook gauntlet for the core: every file in ../shared/corpus (skipped when absent).

`check` never crashes (exit 0 or 1, or 2 with one line for the file that is not a notebook), and the
internal round trip (join, parse, print, split, write) gives back every valid notebook byte for byte.
"""

from __future__ import annotations

import libcst as cst
import pytest

from nbrefactor.checker import check_notebook
from nbrefactor.config import Selection
from nbrefactor.errors import NotebookError
from nbrefactor.notebook.join import join
from nbrefactor.notebook.model import read_notebook
from tests.conftest import CORPUS, corpus_files, run_cli
from tests.invariants import assert_fix_invariants

FILES = corpus_files()
pytestmark = pytest.mark.skipif(not FILES, reason="../shared/corpus is absent")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name[:60])
def test_round_trip_and_check(path):
    try:
        nb = read_notebook(path)
    except NotebookError as err:
        assert "not UTF-8" in str(err), err  # the PNG saved as .ipynb
        return
    if not nb.is_python:
        return
    joined = join(nb)
    module = cst.parse_module(joined.code)
    assert module.code == joined.code
    sources = joined.split(module.code)
    assert all(sources[c.index] == c.source for c in nb.code_cells)
    assert nb.render(sources) == nb.raw
    check_notebook(nb, Selection())  # must not raise


def test_check_over_the_whole_corpus_never_crashes():
    r = run_cli("check", "--output-format", "json", str(CORPUS))
    err = r.stderr.decode()
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "Images__ml3_3d_lot.ipynb" in errors[0]


def test_notebooks_without_a_launch_are_not_flagged_for_cuda_or_data():
    """Plain PyTorch, JAX and analysis notebooks launch nothing: no NBR1xx/NBR2xx."""
    for path in FILES:
        try:
            nb = read_notebook(path)
        except NotebookError:
            continue
        if not nb.is_python:
            continue
        result = check_notebook(nb, Selection())
        if result.facts is None or not result.facts.launches:
            codes = {d.code for d in result.diagnostics}
            assert not codes & {"NBR101", "NBR102", "NBR201"}, (path.name, codes)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name[:60])
def test_fix_is_idempotent_and_clean_of_what_it_fixed(path):
    from nbrefactor.fixer import fix_notebook

    try:
        nb = read_notebook(path)
    except NotebookError:
        return
    if not nb.is_python:
        return
    try:
        result = fix_notebook(nb, unsafe_fixes=True, devices=2)
    except NotebookError as err:
        assert "nbformat 3" in str(err)  # v3 notebooks are read-only: refusing to write is right
        return
    assert_fix_invariants(nb.raw, result, unsafe_fixes=True, devices=2)
