# Exported by `nbrefactor export` from golden/trainer_synthetic/input.ipynb, cells 1, 2, 3, 5, 6, 7.
# Edit the notebook and export again; `nbrefactor export --check` says when this file is stale.


import argparse


# cell 1
import torch
import lightning as L
from torch.utils.data import DataLoader, TensorDataset, random_split


# cell 2
BATCH_SIZE = 64


def transform(x):
    return x * 2.0


# cell 3
class LitRegressor(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def step(self, batch, name):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log(name, loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self.step(batch, "train_loss")

    def validation_step(self, batch, batch_idx):
        self.step(batch, "val_loss")

    def test_step(self, batch, batch_idx):
        self.step(batch, "test_loss")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def setup(self, stage=None):
        self.full = TensorDataset(X, X.sum(dim=1, keepdim=True))
        self.train_set, self.val_set = random_split(self.full, [64, 64], generator=torch.Generator().manual_seed(0))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=BATCH_SIZE)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=BATCH_SIZE)

    def test_dataloader(self):
        return DataLoader(TensorDataset(X[:32], X[:32].sum(dim=1, keepdim=True)), batch_size=BATCH_SIZE)


# cell 5
X = transform(torch.linspace(-1, 1, 128).unsqueeze(1) * torch.tensor([[1.0, -1.0, 0.5, 2.0]]))


def _devices(text):
    """`--devices 2` is a number of devices, `--devices 0,1` or `auto` are given as written."""
    return int(text) if text.isdigit() else text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Training exported from golden/trainer_synthetic/input.ipynb by nbrefactor.")
    parser.add_argument('--accelerator', default='cpu', help="accelerator of the Trainer (default: 'cpu')")
    parser.add_argument('--devices', type=_devices, default=2, help='devices of the Trainer (default: 2)')
    parser.add_argument('--num-nodes', type=int, default=1, help='num_nodes of the Trainer (default: 1)')
    return parser.parse_args(argv)


def main(args):
    # cell 6
    torch.manual_seed(0)
    model = LitRegressor()
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=args.devices, max_epochs=10,
        enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False, num_nodes=args.num_nodes)
    trainer.fit(model)
    if trainer.global_rank == 0:
        print({k: round(v.item(), 4) for k, v in sorted(trainer.callback_metrics.items())})
    # cell 7
    result = trainer.test(model, verbose=False)
    if trainer.global_rank == 0:
        print({k: round(v, 4) for k, v in result[0].items()})


if __name__ == "__main__":
    main(parse_args())
