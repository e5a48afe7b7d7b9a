"""A tiny JEPAModule and DataModule on synthetic feature vectors, fast enough to run many
Trainer fits (and a 2-process DDP run) in a few seconds. Imported by the tests and by the DDP
script run in a subprocess."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from jepa_lightning.methods.base import JEPAModule


class ToyJEPA(JEPAModule):
    """Context encoder ``nn.Linear``; EMA target copy; the SSL loss pulls the context output
    towards a rolled copy of the target's (so parameters do move when ``lr > 0``)."""

    def __init__(self, in_dim: int = 8, dim: int = 8, **kwargs: Any) -> None:
        kwargs.setdefault("warmup_epochs", 0.0)
        super().__init__(**kwargs)
        self.context_encoder = nn.Linear(in_dim, dim)
        self.target_encoder = copy.deepcopy(self.context_encoder).requires_grad_(False)
        self._dim = dim

    @property
    def embed_dim(self) -> int:
        return self._dim

    def sample_masks(self, batch_size: int) -> None:
        return None  # no masks

    def forward_masked(self, images: Tensor, masks: None) -> tuple[Tensor, Tensor]:
        prediction = self.context_encoder(images)  # (B, D)
        with torch.no_grad():
            target = self.target_encoder(images)  # (B, D)
        return prediction, target

    def loss(self, fwd: tuple[Tensor, Tensor], masks: None) -> dict[str, Tensor]:
        prediction, target = fwd
        return {"loss": (prediction - target.roll(1, dims=1)).pow(2).mean()}

    def pooled_target(self, fwd: tuple[Tensor, Tensor]) -> Tensor:
        return fwd[1]

    def features(self, images: Tensor) -> Tensor:
        return self.feature_encoder(images)

    @torch.no_grad()
    def target_map(self, images: Tensor) -> Tensor:
        """The target output as a ``(B, D/4, 2, 2)`` grid, for the target-share monitor."""
        return self.target_encoder(images).view(images.shape[0], -1, 2, 2)


def clusters(n: int, num_classes: int, dim: int, spread: float, seed: int) -> TensorDataset:
    """Gaussian clusters around fixed random centres (centres depend only on ``dim``)."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    x = centres[labels] * spread + torch.randn(n, dim, generator=g)
    return TensorDataset(x, labels)


class ToyData(pl.LightningDataModule):
    """Labelled synthetic clusters: SSL train loader (shuffled), validation loader and the
    clean ``train_eval_dataloader`` the k-NN bank uses."""

    def __init__(
        self,
        n_train: int = 512,
        n_val: int = 200,
        num_classes: int = 10,
        dim: int = 8,
        spread: float = 3.0,
        batch_size: int = 32,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.train = clusters(n_train, num_classes, dim, spread, seed=1)
        self.val = clusters(n_val, num_classes, dim, spread, seed=2)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)

    def train_eval_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size)


def sgd(lr: float) -> Callable[[Any], torch.optim.Optimizer]:
    """An `OptimizerCallable`: plain SGD with this learning rate."""
    return lambda params: torch.optim.SGD(params, lr=lr)


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """A Trainer with no logger output, checkpoints, progress bar or summary."""
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    defaults.update(kwargs)
    return pl.Trainer(**defaults)
