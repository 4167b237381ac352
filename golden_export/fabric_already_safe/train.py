# Exported by `nbrefactor export` from golden/fabric_already_safe/input.ipynb, cells 1, 2, 3.
# Edit the notebook and export again; `nbrefactor export --check` says when this file is stale.


import argparse


# cell 1
import torch
import lightning as L
from torch.utils.data import DataLoader, TensorDataset


# cell 2
def train(fabric):
    X = torch.arange(16, dtype=torch.float32).unsqueeze(1)
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(X, 2 * X), batch_size=16))
    fabric.print("batches", len(loader))
    return len(loader)


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
    parser = argparse.ArgumentParser(description="Training exported from golden/fabric_already_safe/input.ipynb by nbrefactor.")
    parser.add_argument('--accelerator', default='cpu', help="accelerator of the Fabric (default: 'cpu')")
    parser.add_argument('--devices', type=_devices, default=2, help='devices of the Fabric (default: 2)')
    parser.add_argument('--num-nodes', type=int, default=1, help='num_nodes of the Fabric (default: 1)')
    parser.add_argument('--strategy', default='ddp', help="strategy of the Fabric (default: 'ddp' (the notebook's 'ddp_notebook' forks, which a script launcher does itself))")
    return parser.parse_args(argv)


def main(args):
    # cell 3
    fabric = L.Fabric(accelerator=args.accelerator, devices=args.devices, strategy=args.strategy, num_nodes=args.num_nodes)
    launch_result = launcher(fabric)(train)
    if fabric.global_rank == 0:
        print("result", launch_result)


if __name__ == "__main__":
    main(parse_args())
