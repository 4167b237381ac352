# Exported by `nbrefactor export` from golden/accelerate_cuda_model_args/expected.ipynb, cells 2, 3, 4, 5, 6.
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
import os; os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # keeps torch.cuda.is_available() fork-safe

device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)


# cell 4
def training_function(model):
    accelerator = Accelerator()
    torch.manual_seed(0)
    X = torch.linspace(-1, 1, 64).unsqueeze(1) * torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    loader = DataLoader(TensorDataset(X, X.sum(dim=1, keepdim=True)), batch_size=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for epoch in range(3):
        for xb, yb in loader:
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
    accelerator.print("trained", epoch + 1, "epochs")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Training exported from golden/accelerate_cuda_model_args/expected.ipynb by nbrefactor. `accelerate launch` starts the processes: the number of processes and machines and the mixed precision are its options (--num_processes, --num_machines, --mixed_precision), not this script's.")
    parser.add_argument('--cpu', action="store_true", default=False, help='train on the CPU even where there are GPUs (Accelerator(cpu=True)); several processes on a machine without GPUs need it: accelerate launch --multi_gpu --num_processes N SCRIPT --cpu (default: False)')
    return parser.parse_args(argv)


def main(args):
    state = PartialState(cpu=args.cpu)  # this process's place in the launch; the Accelerator joins it
    # cell 5
    # the notebook's notebook_launcher(training_function, args=(model,), num_processes=2): here `accelerate launch` has started the processes
    training_function(model)
    if state.is_main_process:
        # cell 6
        print("done")


if __name__ == "__main__":
    main(parse_args())
