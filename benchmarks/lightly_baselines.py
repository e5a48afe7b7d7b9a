"""BYOL, SimCLR and VICReg baselines for the benchmarks, built from lightly's pure-torch parts
with the CIFAR-10 settings of lightly's benchmarks, on the same ResNet-18 trunk as CNN-JEPA's
small-image encoder (3×3/1 stem, no max-pool):

* BYOL: projection 512-1024-256, prediction 256-1024-256, SGD lr 0.06 × batch/128, momentum 0.9,
  wd 5e-4, cosine LR, EMA cosine 0.99 -> 1.0; lightly's BYOL views without blur.
* SimCLR: projection 512-512-128, NT-Xent (τ = 0.5), SGD lr 0.06 × batch/128, momentum 0.9,
  wd 5e-4, cosine LR; SimCLR views without blur, colour jitter strength 0.5.
* VICReg: projection 512-2048-2048 (Barlow Twins head), VICReg loss 25/25/1, LARS lr
  0.3 × batch/128, momentum 0.9, wd 1e-4, linear warm-up over the first 10 % of steps (lightly:
  20 of 200 epochs) then cosine; the SimCLR views.

Every schedule is a function of ``trainer.estimated_stepping_batches``, so a run of any length
(a wall-clock budget turned into ``max_steps``) gets the whole schedule. Not part of the
library: it exists so that quality and speed are compared side by side.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torchvision
from lightly.loss import NegativeCosineSimilarity, NTXentLoss, VICRegLoss
from lightly.models.modules.heads import (
    BarlowTwinsProjectionHead,
    BYOLPredictionHead,
    BYOLProjectionHead,
    SimCLRProjectionHead,
)
from lightly.transforms import SimCLRTransform
from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from jepa_lightning import ImageFolderDataModule
from jepa_lightning.callbacks.ema import ema_update
from jepa_lightning.schedules import warmup_cosine


def small_resnet18() -> nn.Module:
    """ResNet-18 trunk with the 3×3/1 stem and no max-pool, output (B, 512, h, w)."""
    net = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()  # type: ignore[assignment]
    return nn.Sequential(*list(net.children())[:-2])


class _TwoView(pl.LightningModule):
    """Shared plumbing: a ResNet-18 trunk, two views per image, a stepwise LR schedule."""

    warmup_fraction = 0.0

    def __init__(self, batch_size: int = 128) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.backbone = small_resnet18()

    @property
    def eval_encoder(self) -> nn.Module:
        """The trunk a benchmark evaluates (BYOL: the EMA one, as its paper)."""
        return self.backbone

    def pooled(self, x: Tensor) -> Tensor:
        return self.backbone(x).mean(dim=(2, 3))  # (B, 512)

    def loss(self, x0: Tensor, x1: Tensor) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        (x0, x1), _ = batch
        loss = self.loss(x0, x1)
        self.log("train/loss", loss)
        return loss

    def make_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def configure_optimizers(self) -> Any:
        opt = self.make_optimizer()
        total = int(self.trainer.estimated_stepping_batches)
        warmup = round(self.warmup_fraction * total)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, total, warmup)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class BYOL(_TwoView):
    def __init__(self, batch_size: int = 128) -> None:
        super().__init__(batch_size)
        self.projection_head = BYOLProjectionHead(512, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone).requires_grad_(False)
        self.projection_head_momentum = copy.deepcopy(self.projection_head).requires_grad_(False)
        self.criterion = NegativeCosineSimilarity()

    @property
    def eval_encoder(self) -> nn.Module:
        return self.backbone_momentum

    def _online(self, x: Tensor) -> Tensor:
        return self.prediction_head(self.projection_head(self.pooled(x)))

    @torch.no_grad()
    def _target(self, x: Tensor) -> Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).mean(dim=(2, 3)))

    def loss(self, x0: Tensor, x1: Tensor) -> Tensor:
        m = cosine_schedule(
            self.global_step, int(self.trainer.estimated_stepping_batches), 0.99, 1.0
        )
        ema_update(self.backbone, self.backbone_momentum, m)
        ema_update(self.projection_head, self.projection_head_momentum, m)
        return 0.5 * (
            self.criterion(self._online(x0), self._target(x1))
            + self.criterion(self._online(x1), self._target(x0))
        )

    def make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(
            params, lr=0.06 * self.batch_size / 128, momentum=0.9, weight_decay=5e-4
        )


class SimCLR(_TwoView):
    def __init__(self, batch_size: int = 128) -> None:
        super().__init__(batch_size)
        self.projection_head = SimCLRProjectionHead(512, 512, 128)
        self.criterion = NTXentLoss(temperature=0.5)

    def loss(self, x0: Tensor, x1: Tensor) -> Tensor:
        return self.criterion(
            self.projection_head(self.pooled(x0)), self.projection_head(self.pooled(x1))
        )

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            self.parameters(), lr=0.06 * self.batch_size / 128, momentum=0.9, weight_decay=5e-4
        )


class VICReg(_TwoView):
    warmup_fraction = 0.1  # lightly: 20 warm-up epochs of 200

    def __init__(self, batch_size: int = 128) -> None:
        super().__init__(batch_size)
        self.projection_head = BarlowTwinsProjectionHead(512, 2048, 2048)
        self.criterion = VICRegLoss()

    def loss(self, x0: Tensor, x1: Tensor) -> Tensor:
        return self.criterion(
            self.projection_head(self.pooled(x0)), self.projection_head(self.pooled(x1))
        )

    def make_optimizer(self) -> torch.optim.Optimizer:
        return LARS(
            self.parameters(), lr=0.3 * self.batch_size / 128, momentum=0.9, weight_decay=1e-4
        )


ViewKind = Literal["byol", "simclr"]


class TwoViewDataModule(ImageFolderDataModule):
    """The shared ImageFolder DataModule (seeded, resumable) with lightly's two-view
    augmentations: ``byol`` (BYOL's asymmetric views) or ``simclr`` (SimCLR's, for SimCLR and
    VICReg); no blur at CIFAR size."""

    def __init__(self, views: ViewKind = "byol", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.views = views

    @property
    def train_transform(self) -> Any:
        normalize = {"mean": list(self.mean), "std": list(self.std)}
        size = self.image_size
        if self.views == "simclr":
            return SimCLRTransform(
                input_size=size, cj_strength=0.5, gaussian_blur=0.0, normalize=normalize
            )
        return BYOLTransform(
            BYOLView1Transform(input_size=size, gaussian_blur=0.0, normalize=normalize),
            BYOLView2Transform(input_size=size, gaussian_blur=0.0, normalize=normalize),
        )


#: name -> (module class, views)
BASELINES: dict[str, tuple[type[_TwoView], ViewKind]] = {
    "byol": (BYOL, "byol"),
    "simclr": (SimCLR, "simclr"),
    "vicreg": (VICReg, "simclr"),
}
