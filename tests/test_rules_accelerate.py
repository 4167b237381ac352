"""Accelerate notebooks through `nbrefactor check` as a user runs it: the tutorial done wrong
(everything at top level, no launcher), a CUDA model handed to `notebook_launcher` through `args=`,
and the already-safe layout of Accelerate's notebook tutorial (no finding from any rule)."""

from __future__ import annotations

import json

import libcst as cst

from codemods.fixes import Options, fix_module
from tests.conftest import run_cli


def _notebook(tmp_path, name: str, *cells: str):
    nb = {
        "cells": [
            {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": cell.strip("\n").splitlines(keepends=True)}
            for cell in cells
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = tmp_path / name
    path.write_text(json.dumps(nb))
    return path


def _check(path):
    r = run_cli("check", "--output-format", "json", str(path))
    return r.returncode, [(d["code"], d["cell"], d["location"]["row"], d["location"]["column"], d["message"]) for d in json.loads(r.stdout)]


IMPORTS = """
import torch
from torch.utils.data import DataLoader, TensorDataset
from accelerate import Accelerator, notebook_launcher
"""


def test_tutorial_done_wrong_trains_in_the_notebook_process(tmp_path):
    path = _notebook(
        tmp_path,
        "wrong.ipynb",
        IMPORTS,
        """
accelerator = Accelerator(mixed_precision="fp16")
model = torch.nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
train_loader = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=8)
""",
        """
model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
for (x,) in train_loader:
    loss = model(x).sum()
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad()
""",
    )
    rc, found = _check(path)
    assert rc == 1
    assert [f[:4] for f in found] == [("NBR305", 3, 1, 34), ("NBR305", 3, 4, 5)]
    assert "`accelerator.prepare`" in found[0][4] and "notebook_launcher(training_function, num_processes=N)" in found[0][4]
    assert "`accelerator.backward`" in found[1][4]


def test_cuda_model_handed_to_the_launcher_through_args(tmp_path):
    path = _notebook(
        tmp_path,
        "args.ipynb",
        IMPORTS,
        """
model = torch.nn.Linear(4, 2).cuda()
train_ds = TensorDataset(torch.randn(64, 4))
""",
        """
def training_function(model, train_ds):
    accelerator = Accelerator()
    loader = DataLoader(train_ds, batch_size=8)
    model, loader = accelerator.prepare(model, loader)

notebook_launcher(training_function, args=(model, train_ds))
""",
    )
    rc, found = _check(path)
    assert rc == 1
    assert [f[:4] for f in found] == [("NBR101", 2, 1, 9), ("NBR201", 2, 2, 12), ("NBR403", 3, 6, 1)]
    assert "`.cuda()` moves memory to the GPU" in found[0][4]
    assert "reaches `notebook_launcher`; build it inside the launched function" in found[1][4]
    assert "num_processes" in found[2][4]


def test_already_safe_accelerate_notebook_has_no_finding(tmp_path):
    path = _notebook(
        tmp_path,
        "safe.ipynb",
        IMPORTS,
        """
def training_function():
    accelerator = Accelerator(mixed_precision="fp16")
    model = torch.nn.Linear(4, 2).to(accelerator.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=8)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for (x,) in loader:
        loss = model(x).sum()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    accelerator.wait_for_everyone()
""",
        """
notebook_launcher(training_function, num_processes=2)
""",
    )
    rc, found = _check(path)
    assert (rc, found) == (0, [])


def test_devices_option_sets_num_processes():
    module = cst.parse_module("from accelerate import notebook_launcher\nnotebook_launcher(train, args=(1,))\n")
    steps = list(fix_module(module, Options(devices=4)))
    assert steps and steps[-1].code.endswith("notebook_launcher(train, args=(1,), num_processes=4)\n")
    assert not list(fix_module(module, Options()))  # no count given: nothing to write
