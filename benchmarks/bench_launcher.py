"""What `nbrefactor run` costs on top of running the notebook: the launcher against a plain nbclient
execution of the same notebook, side by side in one process, several repetitions.

    python benchmarks/bench_launcher.py [--reps 5]

Both run a fresh kernel on the same notebook doing the same work: the notebooks ask for
`ddp_notebook` on 2 CPU processes themselves and the launcher runs with `--full`, so no override
changes what is computed. The launcher's time includes everything `nbrefactor run` does for one
notebook: the static check, the preamble, the tracer and probe, the rank records, the cleanup and
its checks, and the report. Ratios are measured in this run; timings from other machines or runs
are not comparable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FABRIC = [
    "import torch\nfrom lightning.fabric import Fabric",
    """def train(fabric):
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    loader = fabric.setup_dataloaders(torch.utils.data.DataLoader(data, batch_size=8))
    for x, y in loader:
        loss = torch.nn.functional.mse_loss(model(x), y)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    return 1""",
    "fabric = Fabric(accelerator='cpu', devices=2, strategy='ddp_notebook')\nfabric.launch(train)",
]

TRAINER = [
    "import torch\nimport lightning as L",
    """class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
        return torch.utils.data.DataLoader(data, batch_size=8)""",
    "trainer = L.Trainer(accelerator='cpu', devices=2, strategy='ddp_notebook', max_epochs=1, logger=False,\n"
    "                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)\n"
    "trainer.fit(Tiny())",
]


def write_notebook(path: Path, cells: list[str]) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    path.write_text(nbformat.writes(nb), encoding="utf-8")
    return path


def plain(path: Path, shutdown: str = "graceful") -> float:
    """nbclient as a user would call it: a fresh kernel, every cell (`graceful`: its default shutdown,
    which waits for the kernel to exit; `immediate`: killed at the end, as the launcher does)."""
    import subprocess

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    client = NotebookClient(nb, resources={"metadata": {"path": str(path.parent)}}, shutdown_kernel=shutdown)
    client.execute(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def launcher(path: Path) -> float:
    """What `nbrefactor run NB --accelerator cpu --devices 2 --full` does for one notebook."""
    from nbrefactor.launcher.command import _read, _run_one
    from nbrefactor.launcher.runner import RunSettings

    settings = RunSettings(accelerator="cpu", devices=2, smoke=False, timeout=300)
    stderr, sys.stderr = sys.stderr, open(os.devnull, "w")  # the progress lines
    try:
        started = time.perf_counter()
        notebook, node = _read(str(path))
        report, _ = _run_one(str(path), notebook, node, str(path.parent), settings, "")
        elapsed = time.perf_counter() - started
    finally:
        sys.stderr.close()
        sys.stderr = stderr
    if report["verdict"] != "pass" or report["ranks"] != 2:
        raise SystemExit(f"the launcher did not pass {path.name}: {report['failure']}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")  # the `python3` kernelspec runs `python`

    with tempfile.TemporaryDirectory() as tmp:
        notebooks = {name: write_notebook(Path(tmp) / f"{name}.ipynb", cells) for name, cells in (("fabric", FABRIC), ("trainer", TRAINER))}
        plain(notebooks["fabric"])  # warm the file cache once, for both sides
        print(f"nbrefactor run vs plain nbclient on the same notebook, {args.reps} repetitions, interleaved (seconds)")
        print("  graceful: nbclient's default (waits for the kernel to shut down); immediate: kernel killed at the end")
        print("  ratio: launcher / nbclient immediate (the same end of run as the launcher's)")
        print(f"{'notebook':<9} {'rep':>3} {'graceful':>9} {'immediate':>9} {'launcher':>9} {'ratio':>6}")
        for name, path in notebooks.items():
            rows = []
            for rep in range(1, args.reps + 1):
                g, i, lau = plain(path, "graceful"), plain(path, "immediate"), launcher(path)
                rows.append((g, i, lau, lau / i))
                print(f"{name:<9} {rep:>3} {g:>9.2f} {i:>9.2f} {lau:>9.2f} {lau / i:>6.2f}")
            g, i, lau, ratio = (statistics.median(col) for col in zip(*rows))
            print(f"{name:<9} {'med':>3} {g:>9.2f} {i:>9.2f} {lau:>9.2f} {ratio:>6.2f}   launcher overhead {lau - i:+.2f}s")


if __name__ == "__main__":
    main()
