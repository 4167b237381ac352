"""The diff a Lightning user would accept: small layout properties of what `fix` writes."""

from __future__ import annotations

import textwrap

from nbrefactor.fixer import fix_notebook
from nbrefactor.notebook.model import read_notebook
from tests.invariants import assert_names_bound


def _fix(tmp_path, text: str, **options):
    path = tmp_path / "nb.py"
    path.write_text(textwrap.dedent(text).lstrip())
    notebook = read_notebook(path)
    result = fix_notebook(notebook, **options)
    assert_names_bound(notebook, result.after)
    return [c.source for c in result.after.cells if c.cell_type == "code"], result


FABRIC_HEAD = """\
    # %%
    import torch
    from lightning.fabric import Fabric
    """


def test_a_copied_definition_keeps_its_comment_in_one_place(tmp_path):
    cells, _ = _fix(tmp_path, FABRIC_HEAD + """
    # %%
    # the model, built once
    model = torch.nn.Linear(2, 1)
    print(model)

    # %%
    fabric = Fabric(accelerator="cpu", devices=2)
    fabric.launch()
    model = fabric.setup(model)
    """)
    text = "\n".join(cells)
    assert text.count("# the model, built once") == 1
    assert "def train(fabric):" in text and "fabric.launch(train)" in text


def test_def_train_never_sits_before_code_of_its_cell_that_stays(tmp_path):
    cells, _ = _fix(tmp_path, FABRIC_HEAD + """
    # %%
    fabric = Fabric(accelerator="cpu", devices=2)
    fabric.launch()
    model = torch.nn.Linear(2, 1)
    print("a model with", sum(p.numel() for p in torch.nn.Linear(2, 1).parameters()), "parameters")
    counts = {}
    counts["batches"] = 3
    print(counts)

    # %%
    model = fabric.setup(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    """)
    # The code of the first cell that stays (the exploration) is not put after `def train`: the
    # function goes with the launch, and only the launch's own lines come between them.
    [with_train] = [source for source in cells if "def train(fabric):" in source]
    lines = with_train.split("\n")
    between = lines[lines.index("def train(fabric):") + 1 : next(i for i, ln in enumerate(lines) if ln.startswith("fabric.launch(train)"))]
    top_level = [ln for ln in between if ln and not ln.startswith((" ", "#"))]
    assert top_level == ["import tempfile", 'train_results_path = tempfile.mkdtemp(prefix="nbrefactor-") + "/train_results.pt"'], with_train
    assert 'counts["batches"] = 3' in cells[1] and "def train" not in cells[1]


def test_a_rewritten_cell_does_not_start_with_a_blank_line(tmp_path):
    cells, result = _fix(tmp_path, FABRIC_HEAD + """
    # %%
    x = torch.tensor(1).cuda()

    # %%
    def train(fabric):
        print(x)

    fabric = Fabric(accelerator="cpu", devices=2)
    fabric.launch(train)
    """)
    assert result.changed
    assert all(not source.startswith("\n") for source in cells)
    assert "x = torch.tensor(1).to(fabric.device)" in "\n".join(cells)


def test_a_guarded_cuda_move_of_the_lightning_module_goes_whole(tmp_path):
    cells, _ = _fix(tmp_path, """
    # %%
    import torch
    import lightning as L

    class AE(L.LightningModule):
        def training_step(self, batch, i):
            return batch.sum()

    # %%
    autoencoder = AE()
    if torch.cuda.is_available():
        autoencoder = autoencoder.cuda()
    with torch.no_grad():
        autoencoder = autoencoder.to("cuda")

    # %%
    trainer = L.Trainer(devices=2, strategy="ddp_notebook")
    trainer.fit(autoencoder)
    """, unsafe_fixes=True)
    text = "\n".join(cells)
    assert "autoencoder = autoencoder\n" not in text + "\n"
    assert "torch.cuda.is_available()" not in text
    assert "with torch.no_grad():\n    pass" in text


def test_training_left_after_an_existing_launch_is_refused_with_the_reason_not_half_wrapped(tmp_path):
    cells, result = _fix(tmp_path, FABRIC_HEAD + """
    # %%
    fabric = Fabric(accelerator="cpu", devices=2)

    def train(fabric):
        model = torch.nn.Linear(2, 1)

    fabric.launch(train)

    # %%
    for step in range(3):
        fabric.backward(model(torch.randn(4, 2)).sum())
    """)
    assert not result.changed
    assert any("Fabric training in cell 3 runs in the notebook process after `fabric.launch(train)`" in r for r in result.refused)
    assert [d.code for d in result.remaining] == ["NBR302"]


def _fix_twice(tmp_path, text: str, **options):
    cells, result = _fix(tmp_path, text, **options)
    again = fix_notebook(result.after, **options)
    assert again.fixed == result.fixed, "fix is not idempotent"
    return cells, result


def test_found_by_the_fuzzer_a_refused_wrap_is_retried_once_the_data_fix_made_it_sound(tmp_path):
    cells, result = _fix_twice(tmp_path, """
    # %%
    import lightning as L

    # %%
    from torch.utils.data import DataLoader, TensorDataset
    x = torch.tensor(1).cuda()
    ds = TensorDataset(torch.randn(8, 2))
    loader = DataLoader(ds, batch_size=4)
    fabric = L.Fabric(accelerator='cuda', devices=2)
    fabric.launch()

    # %%
    trainer = L.Trainer(accelerator='gpu', strategy='ddp')
    trainer.test(lit, loader)
    """, unsafe_fixes=True, devices=2)
    text = "\n".join(cells)
    assert "fabric.launch(train)" in text and "datamodule=datamodule" in text
    assert not [r for r in result.refused if "afterwards" in r]  # the early refusal was lifted


def test_found_by_the_fuzzer_a_factory_call_is_not_wrapped_again_and_again(tmp_path):
    cells, _ = _fix_twice(tmp_path, """
    # %%
    import torch

    # %%
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset
    x = torch.tensor(1).cuda()
    torch.cuda.is_available()
    loader = DataLoader(ds, batch_size=4)
    fabric = L.Fabric(accelerator='cuda', devices=2)
    fabric.launch()

    # %%
    trainer = L.Trainer(accelerator='gpu', strategy='ddp')
    trainer.test(lit, loader)
    """, unsafe_fixes=True, devices=2)
    assert "make_loader_2" not in "\n".join(cells)
