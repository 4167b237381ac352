import lightning as L
import torch

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
