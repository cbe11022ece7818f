"""The small built-in model and its synthetic data, generated in-process (nothing is downloaded).

A classification MLP on Gaussian clusters: it learns quickly, so a short run shows a falling loss,
and its width and depth are settings, so the same model can be overhead-bound (small) or
matmul-bound (wide) when comparing precisions.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class DemoMLP(pl.LightningModule):
    def __init__(
        self,
        in_features: int = 64,
        hidden: int = 256,
        depth: int = 3,
        classes: int = 10,
        lr: float = 1e-3,
        fused: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.loss_fn(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, fused=self.hparams.fused or None)

    def matmul_flops_per_step(self, batch_size: int) -> int:
        """Forward + backward FLOPs of the Linear layers (2*m*n*k forward, twice that backward)."""
        return sum(6 * batch_size * m.in_features * m.out_features for m in self.net if isinstance(m, nn.Linear))


def synthetic_classification(n: int, in_features: int = 64, classes: int = 10, seed: int = 0) -> TensorDataset:
    """`n` points around `classes` random centres, with labels: the same data for the same seed."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, in_features, generator=g) * 0.3
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, in_features, generator=g)  # overlapping clusters: the loss falls, then plateaus
    return TensorDataset(x, y)


def synthetic_loader(
    batch_size: int, batches: int, in_features: int = 64, classes: int = 10, seed: int = 0
) -> DataLoader:
    data = synthetic_classification(batch_size * batches, in_features, classes, seed)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=g, drop_last=True)
