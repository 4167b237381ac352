"""The notebook model: lossless reading, cell joining and splitting, splicing changed cells."""

from __future__ import annotations

import json

import libcst as cst
import pytest

from nbrefactor.notebook.join import CellBoundaryError, join
from nbrefactor.notebook.model import notebook_from_cells, read_notebook


def _ipynb(tmp_path, cells, indent=1, ensure_ascii=False, name="nb.ipynb", trailing_newline=True):
    nb = {
        "cells": [
            {"cell_type": t, "execution_count": 3, "id": f"id{i}", "metadata": {"tags": ["x"]},
             "outputs": [{"name": "stdout", "output_type": "stream", "text": ["out ü\n"]}], "source": s.splitlines(True)}
            if t == "code" else {"cell_type": t, "id": f"id{i}", "metadata": {}, "source": s.splitlines(True)}
            for i, (t, s) in enumerate(cells)
        ],
        "metadata": {"kernelspec": {"language": "python", "name": "python3", "display_name": "P"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    text = json.dumps(nb, indent=indent, ensure_ascii=ensure_ascii) + ("\n" if trailing_newline else "")
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


MAGIC_CELLS = [
    ("code", "%matplotlib inline\nimport torch\n!pip install -q lightning"),
    ("markdown", "# Title ü"),
    ("code", "for i in range(2):\n    !echo $i\n    x = i"),
    ("code", "%%time\ny = sum(range(10))\ny"),
    ("code", "%%bash\necho hi"),
    ("code", "files = !ls\nobj?\n%load_ext autoreload"),
    ("code", ""),
    ("code", "print(1)\n"),
    ("raw", "raw text"),
    ("code", "total = (1\n    % 2)"),
]


@pytest.mark.parametrize("indent, ensure_ascii, trailing", [(1, False, True), (2, True, False), (None, False, True), (4, False, True)])
def test_round_trip_is_byte_identical(tmp_path, indent, ensure_ascii, trailing):
    path = _ipynb(tmp_path, MAGIC_CELLS, indent, ensure_ascii, trailing_newline=trailing)
    nb = read_notebook(path)
    joined = join(nb)
    module = cst.parse_module(joined.code)
    assert module.code == joined.code
    sources = joined.split(module.code)
    assert sources == {c.index: c.source for c in nb.code_cells}
    assert nb.render(sources) == path.read_text(encoding="utf-8")


def test_magics_become_placeholders_line_for_line():
    nb = notebook_from_cells(MAGIC_CELLS)
    joined = join(nb)
    opaque = {c.index for c in joined.opaque_cells}
    assert opaque == {4}, "only the %%bash cell is not Python"
    assert "__nbrefactor_magic_" in joined.code
    # `% 2` on a continuation line is Python (modulo), not a magic: the cell parses as is.
    assert "    % 2)" in joined.code
    row_of_x = joined.code.split("\n").index("    x = i") + 1
    assert joined.locate(row_of_x) == (2, 3)


def test_changed_cell_is_spliced_and_everything_else_kept(tmp_path):
    path = _ipynb(tmp_path, [("code", "a = 1"), ("markdown", "text"), ("code", "b = 2\nprint(b)")])
    original = path.read_text(encoding="utf-8")
    nb = read_notebook(path)
    new = nb.render({2: "b = 3\nprint(b)"})
    before, after = json.loads(original), json.loads(new)
    assert after["cells"][0] == before["cells"][0] and after["cells"][1] == before["cells"][1]
    assert after["metadata"] == before["metadata"]
    changed = after["cells"][2]
    assert changed["source"] == ["b = 3\n", "print(b)"]
    assert changed["outputs"] == [] and changed["execution_count"] is None
    assert changed["id"] == "id2" and changed["metadata"] == {"tags": ["x"]}
    # Bytes outside the changed cell are identical.
    start = original.index('"id": "id2"')
    assert new[: original.rfind("{", 0, start)] == original[: original.rfind("{", 0, start)]


def test_split_refuses_lost_or_indented_markers():
    nb = notebook_from_cells([("code", "a = 1"), ("code", "b = 2")])
    joined = join(nb)
    lines = joined.code.split("\n")
    with pytest.raises(CellBoundaryError):
        joined.split("\n".join(lines[:2]))  # second marker lost
    indented = joined.code.replace("# %% nbrefactor-cell 1", "    # %% nbrefactor-cell 1")
    with pytest.raises(CellBoundaryError):
        joined.split("def f():\n    pass\n" + indented)


def test_nbformat3_is_read_in_memory_and_not_written(tmp_path):
    v3 = {
        "metadata": {"name": ""}, "nbformat": 3, "nbformat_minor": 0,
        "worksheets": [{"cells": [
            {"cell_type": "heading", "level": 1, "metadata": {}, "source": ["Title"]},
            {"cell_type": "code", "collapsed": False, "input": ["import torch\n", "x = 1"], "language": "python", "metadata": {}, "outputs": []},
        ], "metadata": {}}],
    }
    p = tmp_path / "old.ipynb"
    p.write_text(json.dumps(v3, indent=1))
    nb = read_notebook(p)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code"]
    assert nb.cells[1].source == "import torch\nx = 1" and nb.is_python
    assert nb.render({1: nb.cells[1].source}) == p.read_text()
    from nbrefactor.errors import NotebookError

    with pytest.raises(NotebookError, match="nbformat 3"):
        nb.render({1: "x = 2"})


def test_jupytext_percent_notebook(tmp_path):
    p = tmp_path / "nb.py"
    p.write_text("# %% [markdown]\n# Hello\n\n# %%\nimport torch\n# %matplotlib inline\nx = 1\n")
    nb = read_notebook(p)
    assert nb.format == "py:percent"
    assert [c.cell_type for c in nb.cells] == ["markdown", "code"]
    assert nb.cells[1].source == "import torch\n%matplotlib inline\nx = 1"
    joined = join(nb)
    assert joined.split(cst.parse_module(joined.code).code)[1] == nb.cells[1].source
    assert nb.render({1: nb.cells[1].source}) == p.read_text()
