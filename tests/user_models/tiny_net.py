"""A user's own model for the tests: not one of AMP Explorer's built-in ones, imported by path.

    python -m amp_core.train --model tiny_net:TinyRegressor --path tests/user_models

The other names are the ways a user's model can be wrong; each must give one line and exit 2.
"""

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

FEATURES = 8


def _points(n: int = 512, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    y = (x @ torch.linspace(-1, 1, FEATURES)).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class TinyRegressor(pl.LightningModule):
    """Linear regression through a small MLP, with its own train_dataloader."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return DataLoader(_points(), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))


class NoLoaderRegressor(TinyRegressor):
    """The same model without data of its own: it needs --data."""

    train_dataloader = pl.LightningModule.train_dataloader


def make_regressor() -> TinyRegressor:
    return TinyRegressor(hidden=16)


def make_loader() -> DataLoader:
    return DataLoader(_points(256, seed=2), batch_size=16)


class PointsData(pl.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(_points(256, seed=3), batch_size=16)


class ManualRegressor(TinyRegressor):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False


class BrokenInit(TinyRegressor):
    def __init__(self):
        raise ValueError("hidden must be positive")


class PlainModule(nn.Module):
    """A torch module, not a LightningModule."""


NUMBER = 42


def returns_a_string():
    return "not a model"
