"""The semantic gate: names bound where the kernel reads them, in cell order, and fixes refused when
they would break that."""

from __future__ import annotations

import json
import textwrap

import pytest

from codemods.fixes import locate
from codemods.gate import new_unbound, unbound_reads
from nbrefactor.fixer import fix_notebook
from nbrefactor.notebook.model import read_notebook


def _names(source: str) -> list[tuple[str, str | None]]:
    return [(u.name, u.reader) for u in unbound_reads(textwrap.dedent(source))]


def test_a_top_level_read_before_any_binding():
    assert _names("""
        loader = DataLoader(dataset=train_ds)
        from torch.utils.data import DataLoader
        train_ds = 1
    """) == [("DataLoader", None), ("train_ds", None)]


def test_a_function_reads_its_free_names_when_it_is_called_not_when_defined():
    assert _names("""
        def make():
            return random_split(ds), Counter
        from collections import Counter
        x = make()
        from torch.utils.data import random_split
        ds = 1
    """) == [("ds", "make"), ("random_split", "make")]
    assert _names("""
        def make():
            return random_split(ds)
        from torch.utils.data import random_split
        ds = 1
        x = make()
    """) == []


def test_a_function_handed_to_launch_is_checked_there_and_through_what_it_calls():
    assert _names("""
        def helper():
            return later
        def train(fabric):
            return helper()
        fabric = object()
        fabric.launch(train)
        later = 1
    """) == [("later", "helper")]


def test_a_local_read_before_it_is_assigned_is_an_unbound_local_error():
    assert _names("""
        def train(fabric):
            model, optimizer = fabric.setup(model, optimizer)
            for batch in range(3):
                if batch:
                    previous = batch
                else:
                    print(previous)
        fabric = object()
        fabric.launch(train)
    """) == [("model", "train"), ("optimizer", "train")]


def test_hooks_run_during_the_launch_so_names_bound_before_the_end_are_fine():
    source = """
        class Model:
            def __init__(self):
                self.n = N
            def train_dataloader(self):
                return DataLoader(train_ds, batch_size=BATCH)
        N = 1
        model = Model()
        from torch.utils.data import DataLoader
        BATCH = 8
        trainer.fit(model)
    """
    assert _names(source) == [("trainer", None), ("train_ds", "Model")]


def test_what_a_kernel_provides_and_what_the_gate_cannot_see_are_not_findings():
    assert _names("""
        display(get_ipython(), In, Out, _, _3, __nbrefactor_magic_0__, print, len)
        if flag:
            a = 1
        else:
            a = 2
        try:
            import fast as impl
        except ImportError as err:
            impl = None
        print(a, impl, [q for q in range(3)], lambda x: x + y)
    """) == [("flag", None)]
    assert _names("from torch import *\nprint(anything)") == []


def test_comparison_reports_only_names_the_fix_newly_leaves_unbound():
    before = "x = undefined\nds = 1\nloader = ds\n"
    after = "x = undefined\nloader = ds\n"
    assert [u.name for u in new_unbound(before, after)] == ["ds"]
    assert new_unbound(before, before) == []
    assert new_unbound("x = (", "x = 1") == []  # cannot judge what does not parse
    assert [u.name for u in new_unbound("x = 1", "x = (")] == ["<syntax>"]


def test_cells_are_compiled_one_by_one_as_the_kernel_compiles_them():
    """Scopes are worked out per cell: `global x` in a later cell than `x = 1` is a SyntaxError for
    the module as one text, but a kernel compiles each cell alone and runs it; the gate judges it."""
    cells = "# %% nbrefactor-cell 0\nx = 1\n# %% nbrefactor-cell 1\nglobal x\nx = 2\nprint(y)\n"
    assert [(u.name, u.line) for u in unbound_reads(cells)] == [("y", 6)]
    # a function's scope is the same compiled alone or in the module: its free names are global
    cells = "# %% nbrefactor-cell 0\ndef f():\n    return model\n# %% nbrefactor-cell 1\nf()\nmodel = 1\n"
    assert [(u.name, u.reader) for u in unbound_reads(cells)] == [("model", "f")]


def test_deep_code_does_not_crash_the_gate():
    deep = "x = " + "(" * 300 + "1" + ")" * 300 + "\n"
    assert unbound_reads(deep) in ([], None)


def test_locate_reads_nbrefactor_and_jupytext_cell_markers():
    code = "# %% nbrefactor-cell 0\nimport x\n# %% nbrefactor-cell 3\na = 1\nb = 2\n"
    assert locate(code, 5) == (4, 2)
    assert locate("# %%\na = 1\n# %% [markdown]\n# hi\n# %%\nb = 2\n", 6) == (3, 1)


def _notebook(tmp_path, cells: list[str]):
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": src}
                  for i, src in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb, indent=1))
    return path


def test_a_fix_that_would_leave_a_name_unbound_is_refused_and_the_others_still_run(tmp_path, monkeypatch):
    # A fix that drops a statement another cell reads (as the data fix once did with an
    # exploration loader's split) is refused with the cell, line and name; the strategy fix,
    # declared after it, is still applied.
    from codemods import fixes
    from codemods.cells import BodyPlan

    def drop_the_split(facts, options):
        plan = BodyPlan()
        plan.remove(next(st.index for st in facts.statements if "train_ds" in st.defines))
        return fixes.Edit([("NBR201", 1, "moved the split")], plan=plan)

    broken = fixes.Fix("a broken data fix", ("NBR201",), unsafe=False, run=drop_the_split)
    monkeypatch.setattr(fixes, "FIXES", (broken, *fixes.FIXES))
    path = _notebook(tmp_path, [
        "import torch\nimport lightning as L\nfrom torch.utils.data import DataLoader, TensorDataset, random_split",
        "full = TensorDataset(torch.randn(64, 4))\ntrain_ds, val_ds = random_split(full, [48, 16])\nloader = DataLoader(train_ds)",
        "batch = next(iter(loader))",
        'trainer = L.Trainer(devices=2, strategy="ddp")\ntrainer.fit(model, loader)',
    ])
    result = fix_notebook(read_notebook(path))
    notes = [r for r in result.refused if "a broken data fix" in r]
    assert notes == ["not rewritten (NBR201, a broken data fix): afterwards `train_ds` is read before the notebook binds it "
                     "(cell 2, line 2); the notebook is left as it was for this fix"], result.refused
    sources = ["".join(c["source"]) for c in json.loads(result.fixed)["cells"]]
    assert "train_ds, val_ds = random_split" in sources[1]  # nothing of the refused fix
    assert 'strategy="ddp_notebook"' in sources[3]  # the fixes after it still ran
    assert [c.code for c in result.changes] == ["NBR401"]


@pytest.mark.parametrize("command", ["FixNotebookCommand", "WrapTrainingCommand"])
def test_the_libcst_commands_go_through_the_same_fixes_and_gate(command):
    import libcst as cst
    from libcst.codemod import CodemodContext

    from codemods import commands

    source = "# %%\nfrom lightning.fabric import Fabric\nimport torch\n\n# %%\nfabric = Fabric(devices=2)\nfabric.launch()\nmodel = torch.nn.Linear(2, 2)\nmodel = fabric.setup(model)\n"
    out = getattr(commands, command)(CodemodContext()).transform_module(cst.parse_module(source)).code
    assert "def train(fabric):" in out and "fabric.launch(train)" in out
    assert new_unbound(source, out) == []
