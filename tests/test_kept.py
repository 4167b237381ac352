"""What the fixer keeps with a node between its passes (`codemods.kept`) gives what computing it
again gives: a module's text is `module.code`, a changed statement is scanned and printed anew."""

from __future__ import annotations

import libcst as cst
import pytest

from codemods.facts import analyse, scan
from codemods.kept import keeping_structure, module_code, statement_code
from nbrefactor.notebook.join import join
from nbrefactor.notebook.model import read_notebook
from tests.conftest import CORPUS

SNIPPETS = [
    "", "\n", "# only a comment", "# a comment\n\n", "x = 1", "x = 1\n", "x = 1\r\ny = 2\r\n", "x = 1\r\ny = 2",
    "import torch\n\n\ndef f():\n\tif x:\n\t\treturn 1\n# trailing comment\n\n", "if x:\n    pass\n    # footer\n",
    "# header\n\nclass A:\n    x = 1\n\n\n# end", "a = (1,\n     2)  # c\nb = 3 \\\n  + 4\n",
]


@pytest.mark.parametrize("source", SNIPPETS)
def test_a_modules_text_is_its_code(source):
    module = cst.parse_module(source)
    with keeping_structure():
        assert module_code(module) == module.code == source
        assert module_code(module) == source  # the second time from the kept statement texts
    assert module_code(module) == source


def test_a_changed_statement_is_printed_and_scanned_anew():
    module = cst.parse_module("import torch\nx = torch.ones(2)\ny = x + 1\n")
    with keeping_structure():
        assert module_code(module) == module.code
        assert "torch" in scan(module.body[1]).loads
        changed = module.body[1].with_changes(body=[cst.parse_statement("x = numpy.ones(2)").body[0]])
        new = module.with_changes(body=[module.body[0], changed, module.body[2]])
        assert module_code(new) == new.code == "import torch\nx = numpy.ones(2)\ny = x + 1\n"
        assert "numpy" in scan(new.body[1]).loads and "torch" not in scan(new.body[1]).loads
        assert statement_code(new, new.body[1]) == "x = numpy.ones(2)\n"


def _corpus_modules():
    for path in sorted(CORPUS.rglob("*.ipynb"))[:40] if CORPUS.is_dir() else []:
        try:
            notebook = read_notebook(path)
        except Exception:  # noqa: BLE001 - not a notebook the corpus tests read either
            continue
        if notebook.is_python:
            yield path, join(notebook).module


@pytest.mark.skipif(not CORPUS.is_dir(), reason="no corpus")
def test_corpus_modules_print_and_analyse_the_same_with_kept_results():
    compared = 0
    for path, module in _corpus_modules():
        if module is None:
            continue
        plain = analyse(module)
        with keeping_structure():
            for _ in range(2):  # filling the tables, then reading them
                assert module_code(module) == module.code, path
                kept = analyse(module)
                assert [(s.index, s.cell, s.defines, s.uses, len(s.calls)) for s in kept.statements] == \
                    [(s.index, s.cell, s.defines, s.uses, len(s.calls)) for s in plain.statements], path
        compared += 1
    assert compared >= 20


def test_a_fixers_join_takes_prepared_cells_only_under_the_same_nesting_limit():
    """The join keeps the cells its last run prepared (the fixer joins again after each fix); a
    cell kept while no nesting limit applied is still measured when one does."""
    import dataclasses

    from nbrefactor import limits
    from nbrefactor.errors import NotebookError
    from nbrefactor.notebook.model import notebook_from_cells

    deep = "x = " + "[" * 60 + "]" * 60  # 60 nested lists
    nb = notebook_from_cells([("code", "import lightning as L"), ("code", deep)])
    before = limits.active()
    try:
        limits.configure(dataclasses.replace(before, nesting=0))
        assert join(nb).module is not None  # no limit: prepared and kept
        limits.configure(dataclasses.replace(before, nesting=30))
        with pytest.raises(NotebookError, match="nested too deeply"):
            join(nb)
    finally:
        limits.configure(before)
