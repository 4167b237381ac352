"""Fuzzing: whatever notebook people throw at nbrefactor, check and fix never crash, the output
parses, fix is idempotent, and DESIGN.md's invariants hold; malformed notebook JSON gets one clear
error and nothing is written.

Three generators: hypothesmith's grammar-derived Python cut into cells (odd but valid code),
Lightning-shaped notebooks composed from the fragments the rules and codemods care about (to drive
the fixes themselves), and mutations of valid notebook JSON.
"""

from __future__ import annotations

import json

import hypothesmith
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbrefactor.checker import check_notebook
from nbrefactor.cli import main
from nbrefactor.config import Selection
from nbrefactor.errors import NotebookError
from nbrefactor.fixer import fix_notebook
from nbrefactor.notebook.model import read_notebook
from tests.invariants import assert_fix_invariants

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def _notebook(cells: list[tuple[str, str]]) -> bytes:
    nb = {
        "cells": [
            {"cell_type": t, "id": f"c{i}", "metadata": {}, "source": s}
            | ({"execution_count": 1, "outputs": [{"name": "stdout", "output_type": "stream", "text": ["kept\n"]}]} if t == "code" else {})
            for i, (t, s) in enumerate(cells)
        ],
        "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "P"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return (json.dumps(nb, indent=1) + "\n").encode()


def _assert_invariants(data: bytes, unsafe: bool = True) -> None:
    nb = read_notebook("fuzz.ipynb", data)
    check_notebook(nb, Selection())
    result = fix_notebook(nb, unsafe_fixes=unsafe, devices=2)
    assert_fix_invariants(nb.raw, result, unsafe_fixes=unsafe, devices=2)


MAGICS = ["%matplotlib inline", "!pip install -q lightning", "%load_ext autoreload", "%time", "obj?"]


@st.composite
def python_notebook(draw):
    """hypothesmith's Python, split into cells at line boundaries, with magics and markdown."""
    source = draw(hypothesmith.from_grammar(auto_target=False))
    lines = source.split("\n")
    cuts = sorted(draw(st.sets(st.integers(0, max(len(lines) - 1, 0)), max_size=4)))
    cells: list[tuple[str, str]] = []
    start = 0
    for cut in [*cuts, len(lines)]:
        chunk = "\n".join(lines[start:cut])
        start = cut
        if draw(st.booleans()):
            cells.append(("markdown", "# A heading\nsome *text*"))
        if draw(st.integers(0, 3)) == 0:
            chunk = draw(st.sampled_from(MAGICS)) + "\n" + chunk
        cells.append(("code", chunk))
    return cells


@FUZZ
@given(python_notebook())
def test_any_python_in_cells_never_crashes(cells):
    _assert_invariants(_notebook(cells))


# Lightning-shaped notebooks: the statements the rules and codemods act on, in random order and
# random cells, so the fixes themselves are exercised, not only the reader.
FRAGMENTS = [
    "import torch",
    "import lightning as L",
    "from torch.utils.data import DataLoader, TensorDataset",
    "x = torch.tensor(1).cuda()",
    "torch.cuda.is_available()",
    "device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
    "ds = TensorDataset(torch.randn(8, 2))",
    "loader = DataLoader(ds, batch_size=4)",
    "print(len(ds))",
    "model = torch.nn.Linear(2, 1)",
    "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)",
    "fabric = L.Fabric(accelerator='cuda', devices=2)",
    "fabric.launch()",
    "model, optimizer = fabric.setup(model, optimizer)",
    "loader = fabric.setup_dataloaders(loader)",
    "for (xb,) in loader:\n    loss = model(xb).sum()\n    fabric.backward(loss)\n    optimizer.step()",
    "losses = []",
    "print(losses)",
    "def train(fabric):\n    for (xb,) in loader:\n        pass",
    "fabric.launch(train)",
    "class Lit(L.LightningModule):\n    def training_step(self, batch, batch_idx):\n        return self.layer(batch[0]).sum()",
    "lit = Lit()",
    "lit = lit.to(device)",
    "trainer = L.Trainer(accelerator='gpu', strategy='ddp')",
    "trainer.fit(lit, loader)",
    "trainer.test(lit, loader)",
    "best = Lit.load_from_checkpoint('best.ckpt')",
    "%matplotlib inline",
]


@st.composite
def lightning_notebook(draw):
    """A random subsequence of FRAGMENTS in their script order (a plausible program), with a few
    neighbours swapped, cut into cells at random."""
    keep = draw(st.lists(st.booleans(), min_size=len(FRAGMENTS), max_size=len(FRAGMENTS)))
    picks = [f for f, k in zip(FRAGMENTS, keep) if k] or [FRAGMENTS[0]]
    for i in draw(st.lists(st.integers(0, max(len(picks) - 2, 0)), max_size=2)):
        if i + 1 < len(picks):
            picks[i], picks[i + 1] = picks[i + 1], picks[i]
    cells: list[tuple[str, str]] = []
    current: list[str] = []
    for fragment in picks:
        current.append(fragment)
        if draw(st.integers(0, 2)) == 0:
            cells.append(("code", "\n".join(current)))
            current = []
            if draw(st.booleans()):
                cells.append(("markdown", "Some words between the cells."))
    if current:
        cells.append(("code", "\n".join(current)))
    return cells


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(lightning_notebook(), st.booleans())
def test_lightning_shaped_notebooks_fix_cleanly(cells, unsafe):
    _assert_invariants(_notebook(cells), unsafe=unsafe)


# Malformed notebook JSON: a clear one-line error (exit 2) and nothing written, or a normal run.
VALID = {
    "cells": [
        {"cell_type": "code", "execution_count": None, "id": "a", "metadata": {}, "outputs": [], "source": ["import lightning as L\n", "t = L.Trainer(strategy='ddp')"]},
        {"cell_type": "markdown", "id": "b", "metadata": {}, "source": "text"},
    ],
    "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "P"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def mutated_notebook(draw) -> bytes:
    nb = json.loads(json.dumps(VALID))
    action = draw(st.sampled_from(["drop", "replace", "huge", "encoding", "truncate", "source-types"]))
    if action in ("drop", "replace"):
        target = draw(st.sampled_from(["top", "cell0", "cell1"]))
        obj = nb if target == "top" else nb["cells"][int(target[-1])]
        key = draw(st.sampled_from(sorted(obj)))
        if action == "drop":
            del obj[key]
        else:
            obj[key] = draw(JSON_VALUES)
    elif action == "huge":
        nb["cells"][0]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x" * 2_000_000}]
    elif action == "source-types":
        nb["cells"][0]["source"] = draw(st.sampled_from([[1, 2], {"a": 1}, None, ["ok", 3], 7]))
    text = json.dumps(nb, indent=1)
    if action == "encoding":
        return draw(st.sampled_from([text.encode("utf-16"), b"\xef\xbb\xbf" + text.encode(), text.encode("latin-1") + b"\xe9\xff", text.encode()[: len(text) // 2]]))
    if action == "truncate":
        return text.encode()[: draw(st.integers(0, len(text) - 1))]
    return text.encode()


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated_notebook())
def test_malformed_notebooks_get_one_clear_error_and_nothing_written(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "nb.ipynb"
    path.write_bytes(data)
    runner = CliRunner()
    for args in (["check", str(path)], ["fix", "--unsafe-fixes", str(path)]):
        result = runner.invoke(main, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert result.exit_code in (0, 1, 2)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        if result.exit_code == 2:
            assert len(errors) == 1 and "nb.ipynb" in errors[0], result.output
            assert path.read_bytes() == data, "a refused notebook was written"
        if args[0] == "check" or result.exit_code == 2:
            continue
        try:
            read_notebook(path)  # whatever fix wrote is a notebook nbrefactor reads back
        except NotebookError as err:  # pragma: no cover - reported with the failing example
            pytest.fail(f"fix wrote an unreadable notebook: {err}")
