"""BYOL baseline for the benchmarks, built from lightly's pure-torch parts (lightly's CIFAR-10
recipe: ResNet-18 3×3 stem, projection 512-1024-256, prediction 256-1024-256, SGD lr 0.06 ×
batch/128, momentum 0.9, wd 5e-4, cosine LR, EMA 0.99 -> 1.0 cosine, BYOL views without blur).

Not part of the library: it exists so that quality and speed are compared side by side.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch
import torchvision
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from jepa_lightning import ImageFolderDataModule
from jepa_lightning.callbacks.ema import ema_update


def small_resnet18() -> nn.Module:
    """ResNet-18 trunk with the 3×3/1 stem and no max-pool, output (B, 512, h, w)."""
    net = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()  # type: ignore[assignment]
    return nn.Sequential(*list(net.children())[:-2])


class BYOL(pl.LightningModule):
    def __init__(self, batch_size: int = 128, max_momentum_steps: int | None = None) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.backbone = small_resnet18()
        self.projection_head = BYOLProjectionHead(512, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone).requires_grad_(False)
        self.projection_head_momentum = copy.deepcopy(self.projection_head).requires_grad_(False)
        self.criterion = NegativeCosineSimilarity()

    def _online(self, x: Tensor) -> Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).mean(dim=(2, 3))))

    @torch.no_grad()
    def _target(self, x: Tensor) -> Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).mean(dim=(2, 3)))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        (x0, x1), _ = batch
        m = cosine_schedule(
            self.global_step, int(self.trainer.estimated_stepping_batches), 0.99, 1.0
        )
        ema_update(self.backbone, self.backbone_momentum, m)
        ema_update(self.projection_head, self.projection_head_momentum, m)
        loss = 0.5 * (
            self.criterion(self._online(x0), self._target(x1))
            + self.criterion(self._online(x1), self._target(x0))
        )
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(
            self.parameters(), lr=0.06 * self.batch_size / 128, momentum=0.9, weight_decay=5e-4
        )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class BYOLDataModule(ImageFolderDataModule):
    """The shared ImageFolder DataModule with lightly's two-view BYOL augmentation."""

    @property
    def train_transform(self) -> Any:
        normalize = {"mean": list(self.mean), "std": list(self.std)}
        return BYOLTransform(
            BYOLView1Transform(input_size=self.image_size, gaussian_blur=0.0, normalize=normalize),
            BYOLView2Transform(input_size=self.image_size, gaussian_blur=0.0, normalize=normalize),
        )
