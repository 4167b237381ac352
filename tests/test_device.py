"""`codemods.device`: CUDA placement in moved code onto the training process's own device.

Each case is the notebook's code before the moved statements (imports, top-level names: what
`facts.py` knows), the moved statements, and what they become in `train(fabric)` (or a hook).
"""

from __future__ import annotations

import textwrap

import libcst as cst
import pytest

from codemods.cells import rebuild
from codemods.device import ProcessDevice, on_process_device, on_process_device_all
from codemods.facts import analyse
from codemods.local_fixes import cuda_into_on_fit_start

IMPORTS = "import torch\nfrom torch import nn\n"


def _moved(setup: str, moved: str, device: str = "fabric.device") -> tuple[str, ProcessDevice]:
    """The moved statements rewritten, with the notebook's facts from `setup` + `moved` as one module."""
    setup = IMPORTS + textwrap.dedent(setup)
    moved = textwrap.dedent(moved)
    module = cst.parse_module(setup + moved)
    facts = analyse(module)
    n = len(cst.parse_module(setup).body)
    t = ProcessDevice(device, facts)
    out = [s.visit(t) for s in module.body[n:]]
    return cst.Module(out).code, t


CHANGED = [
    # .cuda() in its forms
    ("", "x = torch.tensor(1).cuda()\n", "x = torch.tensor(1).to(fabric.device)\n"),
    ("", "x = x.cuda(0)\n", "x = x.to(fabric.device)\n"),
    ("", "x = x.cuda(device=1)\n", "x = x.to(fabric.device)\n"),
    ("", "x = x.cuda(non_blocking=True)\n", "x = x.to(fabric.device, non_blocking=True)\n"),
    ("", "x = x.cuda(1, True)\n", "x = x.to(fabric.device, non_blocking=True)\n"),
    ("", "model.cuda()\n", "model.to(fabric.device)\n"),
    # .to(<CUDA>)
    ("", 'x = x.to("cuda")\n', "x = x.to(fabric.device)\n"),
    ("", "x = x.to('cuda:0')\n", "x = x.to(fabric.device)\n"),
    ("", 'x = x.to("cuda:1", non_blocking=True)\n', "x = x.to(fabric.device, non_blocking=True)\n"),
    ("", 'x = x.to("cuda", torch.float16)\n', "x = x.to(fabric.device, torch.float16)\n"),
    ("", 'x = x.to(torch.device("cuda"))\n', "x = x.to(fabric.device)\n"),
    ("", 'x = x.to(torch.device("cuda", 0))\n', "x = x.to(fabric.device)\n"),
    ("", 'x = x.to(device="cuda")\n', "x = x.to(device=fabric.device)\n"),
    ("", 'x = x.to(device="cuda", dtype=torch.float16)\n', "x = x.to(device=fabric.device, dtype=torch.float16)\n"),
    ("", 'x = x.to(f"cuda:{rank}")\n', "x = x.to(fabric.device)\n"),
    # a top-level name that holds a CUDA device (facts.py: Value kind "cuda_device")
    ('device = torch.device("cuda")\n', "x = x.to(device)\n", "x = x.to(fabric.device)\n"),
    ('device = "cuda:0"\n', "x = x.to(device)\n", "x = x.to(fabric.device)\n"),
    ('device = torch.device("cuda" if torch.cuda.is_available() else "cpu")\n', "x = x.to(device)\n", "x = x.to(fabric.device)\n"),
    ('device = "cuda" if torch.cuda.is_available() else "cpu"\n', "y = model(x.to(device))\n", "y = model(x.to(fabric.device))\n"),
    # factories and other calls with device=<CUDA>
    ("", 'x = torch.tensor([1.0], device="cuda")\n', "x = torch.tensor([1.0], device=fabric.device)\n"),
    ('device = torch.device("cuda")\n', "x = torch.zeros(3, 4, device=device)\n", "x = torch.zeros(3, 4, device=fabric.device)\n"),
    ("", 'layer = nn.Linear(2, 2, device="cuda")\n', "layer = nn.Linear(2, 2, device=fabric.device)\n"),
    ("import torch as T\n", 'x = T.randn(2, device="cuda")\n', "x = T.randn(2, device=fabric.device)\n"),
    ("from torch import zeros\n", 'x = zeros(2, device="cuda")\n', "x = zeros(2, device=fabric.device)\n"),
    ("", 'g = torch.Generator(device="cuda")\n', "g = torch.Generator(device=fabric.device)\n"),
    ("", 'y = x.new_zeros(3, device="cuda")\n', "y = x.new_zeros(3, device=fabric.device)\n"),
    ("", 'torch.set_default_device("cuda")\n', "torch.set_default_device(fabric.device)\n"),
    # loading onto the GPU
    ("", 'state = torch.load("m.pt", map_location="cuda")\n', 'state = torch.load("m.pt", map_location=fabric.device)\n'),
    ("", 'state = torch.load("m.pt", "cuda:0")\n', 'state = torch.load("m.pt", fabric.device)\n'),
    ("", 'm = Net.load_from_checkpoint("c.ckpt", map_location="cuda")\n', 'm = Net.load_from_checkpoint("c.ckpt", map_location=fabric.device)\n'),
    # inside blocks and nested functions of the moved code
    (
        'device = torch.device("cuda")\n',
        """\
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.cuda()  # to the GPU
            with torch.no_grad():
                out = model(xb)
        """,
        """\
        for xb, yb in loader:
            xb, yb = xb.to(fabric.device), yb.to(fabric.device)  # to the GPU
            with torch.no_grad():
                out = model(xb)
        """,
    ),
    ("", "def to_gpu(t):\n    return t.cuda()\n", "def to_gpu(t):\n    return t.to(fabric.device)\n"),
    ("", "move = lambda t: t.cuda()\n", "move = lambda t: t.to(fabric.device)\n"),
    # the call's layout stays
    (
        "",
        'x = x.to(\n    "cuda",\n    non_blocking=True,\n)\n',
        "x = x.to(\n    fabric.device,\n    non_blocking=True,\n)\n",
    ),
]


@pytest.mark.parametrize("setup, moved, expected", CHANGED, ids=lambda v: v.strip().replace("\n", " ")[:60] if isinstance(v, str) else None)
def test_cuda_placement_goes_to_the_process_device(setup, moved, expected):
    code, t = _moved(setup, moved)
    assert code == textwrap.dedent(expected)
    assert t.rewrites, "a rewrite must be reported"


UNCHANGED = [
    # .to(...) that is not CUDA placement
    ("", "x = x.to(torch.float16)\n"),
    ("", "x = x.to(dtype=torch.float16)\n"),
    ("", 'x = x.to("cpu")\n'),
    ("", 'x = x.to(torch.device("cpu"))\n'),
    ("", "x = x.to(other)\n"),
    ("", "x = x.to(y.device)\n"),
    ('device = "cpu"\n', "x = x.to(device)\n"),
    ('device = torch.device("cpu")\n', "x = torch.zeros(3, device=device)\n"),
    ("", "def f(device):\n    return x.to(device)\n"),
    # CUDA calls that are not placement
    ("", "torch.cuda.empty_cache()\n"),
    ("", "ok = torch.cuda.is_available()\n"),
    ("", "torch.cuda.set_device(0)\n"),
    ("", 'stream = torch.cuda.Stream(device="cuda")\n'),
    ("", 'with torch.autocast(device_type="cuda"):\n    y = model(x)\n'),
    ("", 'on_gpu = x.device == torch.device("cuda")\n'),
    ("", "on_gpu = x.is_cuda\n"),
    ("", "move = x.cuda\n"),
    ("", 'device = "cuda"\n'),  # the string itself: other code may need a string
    # calls that are not torch's
    ("", 'pipe = pipeline("text-generation", device="cuda")\n'),
    ("def build(device):\n    return device\n", 'b = build(device="cuda")\n'),
    ("", 'x = torch.zeros(3, device="cpu")\n'),
    ("", "x = torch.zeros(3)\n"),
    # where `fabric` means something else
    ("", "run = lambda fabric: fabric.cuda()\n"),
    ("", "class Local:\n    def go(self):\n        return x.cuda()\n"),
]


@pytest.mark.parametrize("setup, moved", UNCHANGED, ids=lambda v: v.strip().replace("\n", " ")[:60] if isinstance(v, str) else None)
def test_what_is_not_cuda_placement_stays(setup, moved):
    code, t = _moved(setup, moved)
    assert code == textwrap.dedent(moved)
    assert t.rewrites == [] and t.summary() is None


def test_a_device_assigned_in_moved_code_becomes_the_process_device_and_its_uses_stay():
    code, t = _moved(
        "",
        """\
        device = torch.device("cuda:0")
        model = Net().to(device)
        x = torch.zeros(3, device=device)
        """,
    )
    assert code == "device = fabric.device\nmodel = Net().to(device)\nx = torch.zeros(3, device=device)\n"
    assert t.summary() == '`torch.device("cuda:0")` -> `fabric.device`'


def test_a_cuda_string_assigned_in_moved_code_stays_and_its_placement_uses_change():
    code, _ = _moved("", 'dev = "cuda"\nx = x.to(dev)\nlabel = f"on {dev}"\n')
    assert code == 'dev = "cuda"\nx = x.to(fabric.device)\nlabel = f"on {dev}"\n'


def test_a_name_rebound_in_moved_code_is_no_longer_a_cuda_device():
    code, _ = _moved('device = torch.device("cuda")\n', 'device = "cpu"\nx = x.to(device)\n')
    assert code == 'device = "cpu"\nx = x.to(device)\n'


def test_in_a_lightning_hook_the_device_is_self_device():
    code, t = _moved('device = torch.device("cuda")\n', "x = torch.tensor(1).cuda()\ny = torch.ones(2, device=device)\n", "self.device")
    assert code == "x = torch.tensor(1).to(self.device)\ny = torch.ones(2, device=self.device)\n"
    assert t.summary() == "`.cuda()` -> `.to(self.device)`, `device=device` -> `device=self.device`"
    # a nested method's `self` is another object
    code, _ = _moved("", "def helper(self):\n    return self.x.cuda()\n", "self.device")
    assert code == "def helper(self):\n    return self.x.cuda()\n"


def test_the_fabric_parameter_name_varies():
    code, _ = _moved("", "x = x.cuda()\n", "fab.device")
    assert code == "x = x.to(fab.device)\n"


def test_summary_counts_repeats():
    _, t = _moved("", "a = a.cuda()\nb = b.cuda()\nc = c.to('cuda')\n")
    assert t.summary() == "`.cuda()` -> `.to(fabric.device)` (2x), `.to('cuda')` -> `.to(fabric.device)`"
    assert t.summary(since=2) == "`.to('cuda')` -> `.to(fabric.device)`"
    assert t.summary(since=3) is None


def test_function_api():
    facts = analyse(cst.parse_module(IMPORTS))
    stmt = cst.parse_statement("x = torch.tensor(1).cuda()\n")
    assert cst.Module([on_process_device(stmt, "fabric.device", facts)]).code == "x = torch.tensor(1).to(fabric.device)\n"
    stmts = [cst.parse_statement('device = torch.device("cuda")\n'), cst.parse_statement("x = x.to(device)\n")]
    out, message = on_process_device_all(stmts, "fabric.device", facts)
    assert cst.Module(out).code == "device = fabric.device\nx = x.to(device)\n"
    assert message == '`torch.device("cuda")` -> `fabric.device`'
    # without facts: literal CUDA still found, names unknown
    assert cst.Module([on_process_device(cst.parse_statement('x = x.to("cuda")\n'), "fabric.device")]).code == "x = x.to(fabric.device)\n"


def test_cuda_moved_into_on_fit_start_runs_on_self_device():
    source = textwrap.dedent(
        """\
        import torch
        import lightning as L

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")


        class LitModel(L.LightningModule):
            def training_step(self, batch, batch_idx):
                return batch.sum()


        model = LitModel()
        # warm up the GPU
        x = torch.tensor(1).cuda() + torch.ones(1, device=device)
        trainer = L.Trainer(devices=2)
        trainer.fit(model)
        """
    )
    module = cst.parse_module(source)
    plan, changes = cuda_into_on_fit_start(analyse(module))
    code = rebuild(module, plan).code
    assert "    def on_fit_start(self):\n        # warm up the GPU\n        x = torch.tensor(1).to(self.device) + torch.ones(1, device=self.device)\n" in code
    assert ".cuda()" not in code
    [(code_, _, message)] = changes
    assert code_ == "NBR101"
    assert message.endswith("on each process's own device: `.cuda()` -> `.to(self.device)`, `device=device` -> `device=self.device`")
