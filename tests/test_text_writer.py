"""Writing a percent script back without jupytext (`nbrefactor.notebook.text._splice_percent`) gives
exactly the text the jupytext path gives (`_splice_with_jupytext`), or declines (and then the jupytext
path writes it).

Its three parts are compared with jupytext's own: where each cell lies (`FastText.spans` against
`cell_layout`, which runs jupytext's reading loop), the lines written for a changed code cell
(`fast_text.percent_code_lines` against jupytext's percent exporter), and whole splices (changed
and removed cells) of every percent script at hand and of generated ones.
"""

from __future__ import annotations

import jupytext
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from nbrefactor.notebook import fast_text
from nbrefactor.notebook.text import (
    TextLayoutError,
    _render_cell,
    _splice_percent,
    _splice_with_jupytext,
    cell_layout,
    splice,
)
from tests.test_text_reader import CORPUS_FILES, REPO_FILES

PY_FILES = [p for p in CORPUS_FILES + REPO_FILES if p.suffix == ".py"]
PERCENT_FILES = [p for p in PY_FILES if (got := fast_text.read(p.read_text(encoding="utf-8"), ".py")) and got.format_name == "percent"]

# Lines that exercise what the exporter does to code: magics in every spelling (commented out),
# things that only look like magics, strings across lines, continuation lines, indentation.
TRICKY_LINES = [
    "x = 1", "", "    y = x + 1", "%matplotlib inline", "!pip install lightning", "  %time f()", "x = !ls",
    "ls", "ls -la", "cat = 3", "cd /tmp", "f?", "f??", "%cd \\", "  /tmp", "s = '''", "%not_magic_in_string",
    "'''", '"""doc', '"""', "# a comment", "# %matplotlib inline", "%%time", "%load_ext autoreload # noescape",
    "print('%d' % 3)", "def f():", "    return 1", "x = 1 \\", "    + 2", "%%capture out", "?print",
]


def _jupytext_code_lines(source: str) -> list[str] | None:
    """The lines jupytext writes under the marker for a code cell with `source` (the jupytext
    path's own cell renderer), or None where that path refuses the cell."""
    node = jupytext.reads("# %%\nx = 1\n\n# %%\ny = 2\n", fmt="py:percent")
    try:
        rendered = _render_cell(node, 0, source, "py:percent", None, "\n")
    except TextLayoutError:
        return None
    assert fast_text.is_percent_marker(rendered[0])
    return [ln.rstrip("\n") for ln in rendered[1:]]


# --- where the cells lie ----------------------------------------------------------------------------


def test_the_cell_spans_are_the_ones_jupytexts_loop_reads():
    compared = 0
    for path in PY_FILES:
        text = path.read_text(encoding="utf-8")
        got = fast_text.read(text, ".py")
        if got is None:
            continue
        assert got.spans == cell_layout(text, "py").spans, path
        compared += 1
    assert compared >= 50  # the corpus and the repository's scripts, nearly all read fast


@pytest.mark.parametrize("text", [
    "x = 1\n", "# %%\nx = 1\n", "\n\n# %%\nx = 1\n\n\n# %% [markdown]\n# hi\n\n# %%\n\n", "# %%\n# %%\n# %%\n",
    "---\n# %%\nx", "# In[3]:\nx = 1\n\n\n# In[ ]:\ny\n",
])
def test_the_cell_spans_of_small_cases(text):
    got = fast_text.read(text, ".py")
    assert got is not None and got.spans == cell_layout(text, "py").spans


# --- the lines of one code cell -----------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TRICKY_LINES), min_size=0, max_size=8), st.booleans())
def test_a_code_cell_is_written_as_jupytext_writes_it(lines, trailing_newline):
    source = "\n".join(lines) + ("\n" if trailing_newline and lines else "")
    ours = fast_text.percent_code_lines(source)
    theirs = _jupytext_code_lines(source)
    if ours is not None and theirs is not None:
        assert ours == theirs, source
    if not source.startswith("%%"):
        assert ours is not None


def test_the_code_cells_at_hand_are_written_as_jupytext_writes_them():
    compared = 0
    for path in PERCENT_FILES:
        for cell_type, source, _ in fast_text.read(path.read_text(encoding="utf-8"), ".py").cells:
            if cell_type != "code":
                continue
            ours, theirs = fast_text.percent_code_lines(source), _jupytext_code_lines(source)
            if ours is not None and theirs is not None:
                assert ours == theirs, (path, source)
                compared += 1
    assert compared >= 400  # 484 code cells in 2026-12


# --- whole splices ----------------------------------------------------------------------------------


def _both(raw: str, changed: dict[int, str], deleted: set[int]) -> tuple[str | None, str | None]:
    fast = _splice_percent(raw, "py:percent", changed, deleted, None)
    try:
        slow = _splice_with_jupytext(jupytext.reads(raw, fmt="py:percent"), raw, "py:percent", changed, deleted, None)
    except TextLayoutError:
        slow = None
    return fast, slow


def _edits(cells: list[tuple[str, str, dict]]):
    """Edits like the fixes make: a line added to a code cell, a call's arguments split over lines,
    a cell emptied and removed, code put first in a cell, several cells at once."""
    code = [i for i, (t, _, _) in enumerate(cells) if t == "code"]
    for n, i in enumerate(dict.fromkeys(code[:1] + code[len(code) // 2 : len(code) // 2 + 1] + code[-1:])):
        source = cells[i][1]
        yield {i: (source + "\nmodel = model.to(fabric.device)", "import lightning as L  # before CUDA\n" + source,
                   source.replace("(", "(\n    ", 1))[n % 3]}, set()
    if len(code) > 2:
        yield {code[0]: cells[code[0]][1] + "\n\n\ndef train(fabric):\n    pass"}, {code[-1]}
        yield {i: cells[i][1] + "\n# moved" for i in code[1:4]}, set()
        yield {}, {code[1], code[2]}


def test_splicing_every_percent_script_at_hand_gives_the_jupytext_paths_text():
    taken = declined = 0
    for path in PERCENT_FILES:
        raw = path.read_text(encoding="utf-8")
        cells = fast_text.read(raw, ".py").cells
        for changed, deleted in _edits(cells):
            fast, slow = _both(raw, changed, deleted)
            if fast is None:
                declined += 1
                continue
            if slow is None:  # the jupytext path refuses a cell it would write before a `pass` cell
                _assert_reads_back(fast, cells, changed, deleted)
            else:
                assert fast == slow, (path, changed.keys(), deleted)
            taken += 1
    assert taken >= 120 and declined <= taken // 10, (taken, declined)  # 134 and 0 in 2026-12


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(["code", "code", "markdown"]),
                       st.lists(st.sampled_from(TRICKY_LINES), min_size=1, max_size=5)), min_size=1, max_size=6),
    st.data(),
)
def test_splicing_generated_percent_notebooks_gives_the_jupytext_paths_text(cells, data):
    nb = new_notebook(cells=[new_code_cell("\n".join(lines)) if t == "code" else new_markdown_cell("\n".join(lines).replace("%%", "%"))
                             for t, lines in cells])
    raw = jupytext.writes(nb, fmt="py:percent")
    read = fast_text.read(raw, ".py")
    if read is None or read.format_name != "percent":
        return
    code = [i for i, (t, _, _) in enumerate(read.cells) if t == "code"]
    if not code:
        return
    chosen = data.draw(st.lists(st.sampled_from(code), min_size=1, max_size=3, unique=True))
    new_lines = data.draw(st.lists(st.sampled_from(TRICKY_LINES), min_size=1, max_size=4))
    deleted = set(data.draw(st.lists(st.sampled_from(range(len(read.cells))), max_size=1)))
    changed = {i: "\n".join(new_lines) for i in chosen if i not in deleted}
    fast, slow = _both(raw, changed, deleted)
    if fast is not None and slow is not None:
        assert fast == slow
    elif fast is not None:  # the jupytext path refuses a cell it would write before a `pass` cell
        _assert_reads_back(fast, read.cells, changed, deleted)


def _assert_reads_back(text: str, cells, changed: dict[int, str], deleted: set[int]) -> None:
    back = jupytext.reads(text, fmt="py:percent")
    want = [(t, changed.get(i, s)) for i, (t, s, _) in enumerate(cells) if i not in deleted]
    assert [(c.cell_type, c.source) for c in back.cells] == want


@pytest.mark.parametrize("raw, changed", [
    ("# %%\r\nimport torch\r\n\r\n# %%\r\nx = torch.ones(2)\r\n", {1: "x = torch.ones(2, device='cpu')\n%time f()"}),
    ("# %%\nimport torch\n\n# %%\nx = torch.ones(2)", {1: "x = torch.ones(2, device='cpu')"}),  # no final newline
    ("# %% [markdown]\n# hi\n\n# %%\nx = 1\n\n\n# %%\ny = 2\n", {1: "x = 2\ndef f():\n    pass"}),  # PEP 8 spacing
    ("# %% tags=['a']\nx = 1\n# %% Title\ny = 2\n", {0: "x = 3", 1: "!ls\ny = 3"}),  # options and titles kept
])
def test_line_endings_final_newline_and_spacing_are_the_jupytext_paths(raw, changed):
    fast, slow = _both(raw, changed, set())
    assert fast is not None and fast == slow


def test_the_public_splice_reads_no_notebook_with_jupytext_when_the_fast_path_takes():
    raw = "# %%\nimport torch\n\n# %%\n# %matplotlib inline\nx = torch.ones(2)\n"
    def must_not_read():
        raise AssertionError("the jupytext notebook was read")
    text = splice(must_not_read, raw, "py:percent", {1: "%matplotlib inline\nx = torch.ones(2, device='cpu')"})
    assert text == "# %%\nimport torch\n\n# %%\n# %matplotlib inline\nx = torch.ones(2, device='cpu')\n"
