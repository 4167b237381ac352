# Exported by `nbrefactor export` from golden/accelerate_tutorial_top_level/expected.ipynb, cells 2, 3, 4, 6.
# Edit the notebook and export again; `nbrefactor export --check` says when this file is stale.
# Run it with `accelerate launch`, which starts the processes: their number, the machines and the mixed precision
# are its options (--num_processes, --num_machines, --mixed_precision); `nbrefactor export --engine accelerate`
# prints the commands. --cpu keeps the processes on the CPU (a machine without GPUs needs it).


import argparse

from accelerate import PartialState


# cell 2
import torch
from accelerate import Accelerator, notebook_launcher
from torch.utils.data import DataLoader, TensorDataset


# cell 3
def training_function():
    accelerator = Accelerator(cpu=True)
    X = torch.linspace(-1, 1, 64).unsqueeze(1) * torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    y = X.sum(dim=1, keepdim=True)
    loader = DataLoader(TensorDataset(X, y), batch_size=64)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    losses = []
    for epoch in range(20):
        for xb, yb in loader:
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
        losses.append(round(torch.nn.functional.mse_loss(model(X), y).item(), 4))
    # The notebook reads these after training: rank 0 hands them back through a file.
    if accelerator.is_main_process:
        torch.save({"X": X, "losses": losses, "model": accelerator.unwrap_model(model)}, train_results_path)


# cell 4
import tempfile


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Training exported from golden/accelerate_tutorial_top_level/expected.ipynb by nbrefactor. `accelerate launch` starts the processes: the number of processes and machines and the mixed precision are its options (--num_processes, --num_machines, --mixed_precision), not this script's.")
    parser.add_argument('--cpu', action="store_true", default=True, help="train on the CPU even where there are GPUs (Accelerator(cpu=True)); several processes on a machine without GPUs need it: accelerate launch --multi_gpu --num_processes N SCRIPT --cpu (default: True: the notebook's Accelerator(cpu=True) in cell 3)")
    return parser.parse_args(argv)


def main(args):
    global train_results_path
    state = PartialState(cpu=args.cpu)  # this process's place in the launch; the Accelerator joins it
    # cell 4
    train_results_path = tempfile.mkdtemp(prefix="nbrefactor-") + "/train_results.pt"
    # the notebook's notebook_launcher(training_function, num_processes=2): here `accelerate launch` has started the processes
    training_function()
    if state.is_main_process:
        train_results = torch.load(train_results_path, map_location="cpu", weights_only=False)
        X, losses, model = train_results["X"], train_results["losses"], train_results["model"]
        print("trained", len(losses), "epochs")
        # cell 6
        print("final loss", losses[-1])
        with torch.no_grad():
            print("prediction", round(model(X[:1]).item(), 3))


if __name__ == "__main__":
    main(parse_args())
