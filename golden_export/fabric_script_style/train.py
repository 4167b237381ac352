# Exported by `nbrefactor export` from golden/fabric_script_style/input.ipynb, cells 2, 3, 5, 8, 10.
# Edit the notebook and export again; `nbrefactor export --check` says when this file is stale.
# cell 2: left out '%load_ext autoreload' (IPython)
# cell 7: left out '%env TOKENIZERS_PARALLELISM=false' (IPython)


import argparse


# cell 2
import torch
import lightning as L
from torch.utils.data import DataLoader, TensorDataset


# cell 5
def train(fabric):
    X = torch.linspace(-1, 1, 64).unsqueeze(1) * torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    y = X.sum(dim=1, keepdim=True)  # the target
    loader = DataLoader(TensorDataset(X, y), batch_size=64)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # Fabric moves them to the device and wraps them for DDP
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(loader)
    losses = []
    for epoch in range(30):
        for xb, yb in loader:
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
        # the loss over all the data: the same on every process
        losses.append(round(torch.nn.functional.mse_loss(model(X), y).item(), 4))
        if epoch % 10 == 0:
            fabric.print("epoch", epoch, "loss", losses[-1])
    # The notebook reads these after training: rank 0 hands them back through a file.
    if fabric.global_rank == 0:
        torch.save({"X": X, "losses": losses, "model": model.module}, train_results_path)


# cell 8
import tempfile


def _devices(text):
    """`--devices 2` is a number of devices, `--devices 0,1` or `auto` are given as written."""
    return int(text) if text.isdigit() else text


def launcher(fabric):
    """`fabric.launch`; under `fabric run`, which has started the processes and refuses `launch()`,
    a direct call of the function."""
    import os

    if os.environ.get("LT_CLI_USED", "0") not in ("", "0"):
        return lambda function=lambda fabric: None, *args, **kwargs: function(fabric, *args, **kwargs)
    return fabric.launch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Training exported from golden/fabric_script_style/input.ipynb by nbrefactor.")
    parser.add_argument('--accelerator', default='cpu', help="accelerator of the Fabric (default: 'cpu')")
    parser.add_argument('--devices', type=_devices, default=2, help='devices of the Fabric (default: 2)')
    parser.add_argument('--num-nodes', type=int, default=1, help='num_nodes of the Fabric (default: 1)')
    return parser.parse_args(argv)


def main(args):
    global train_results_path
    # cell 3
    fabric = L.Fabric(accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes)
    # cell 8
    train_results_path = tempfile.mkdtemp(prefix="nbrefactor-") + "/train_results.pt"
    launcher(fabric)(train)
    if fabric.global_rank == 0:
        train_results = torch.load(train_results_path, map_location="cpu", weights_only=False)
        X, losses, model = train_results["X"], train_results["losses"], train_results["model"]
        # cell 10
        print("final loss", losses[-1], "after", len(losses), "epochs")
        with torch.no_grad():
            preds = model(X[:3]).squeeze(1)
        print("predictions", [round(v, 3) for v in preds.tolist()])


if __name__ == "__main__":
    main(parse_args())
