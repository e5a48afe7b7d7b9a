"""The peers of the learning-curve race, built from lightly's pure-torch parts and run as their
authors run them, on the same 32 px encoders as our JEPAs (ResNet-18 with the 3×3/1 stem and no
max-pool; ViT-Tiny/4 with fixed sin-cos positions):

* BYOL, lightly's CIFAR-10 benchmark: projection 512-1024-256, prediction 256-1024-256, SGD
  lr 0.06 × batch/128, momentum 0.9, wd 5e-4, cosine LR, **constant EMA momentum 0.99**; BYOL's
  views without blur. lightly's k-NN scores the **online** backbone, so that is the protocol
  encoder; the EMA target is evaluated beside it.
* SimCLR, lightly's CIFAR-10 benchmark: projection 512-512-128, NT-Xent (τ = 0.5), SGD
  lr 0.06 × batch/128, momentum 0.9, wd 5e-4, cosine LR; SimCLR views without blur, colour
  jitter strength 0.5.
* VICReg, lightly's Imagenette benchmark (lightly's CIFAR-10 benchmark has no VICReg): projection
  512-2048-2048 (Barlow Twins head), VICReg loss 25/25/1, LARS lr 0.3 × batch/256, momentum 0.9,
  wd 1e-4, linear warm-up over 10 % of the steps (20 of 200 epochs) then cosine;
  ``VICRegTransform`` views (no blur at 32 px).
* LeJEPA (``lejepa_baselines.py``): lightly's ``LeJEPALoss``/``SIGReg``.

Every schedule is a pure function of the step and ``trainer.estimated_stepping_batches``, so a run
of any length (a wall-clock budget turned into ``max_steps``) gets the whole schedule and ends on
its final value at the last step. Not part of the library: it exists so that quality and speed
are compared side by side.
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
from lightly.transforms.dino_transform import DINOTransform, DINOViewTransform
from lightly.transforms.multi_view_transform import MultiViewTransform
from lightly.transforms.vicreg_transform import VICRegTransform
from lightly.utils.lars import LARS
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


class MultiViewMethod(pl.LightningModule):
    """Shared plumbing of the peers: a trunk, a list of views per image, a stepwise LR schedule
    (linear warm-up over ``warmup_fraction`` of the steps from ``warmup_start`` × the peak, then
    a cosine to ``final_lr_ratio`` × the peak on the last step).

    ``encoders()`` names every encoder a benchmark evaluates; ``protocol`` is the one a method's
    authors score (fixed here, before any run, never chosen by which scores higher).
    """

    warmup_fraction = 0.0
    warmup_start = 0.0
    final_lr_ratio = 0.0
    protocol = "online"

    def __init__(self, batch_size: int = 128) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.backbone = small_resnet18()

    def encoders(self) -> dict[str, nn.Module]:
        """The evaluated trunks by name (``online``; EMA methods add ``target``)."""
        return {"online": self.backbone}

    def pooled(self, x: Tensor) -> Tensor:
        return self.backbone(x).mean(dim=(2, 3))  # (B, 512)

    def loss(self, views: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        views, _ = batch
        loss = self.loss(list(views))
        self.log("train/loss", loss)
        return loss

    def make_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def lr_factor(self, step: int) -> float:
        """The peak-relative learning rate at optimiser step ``step`` (0-based)."""
        total = int(self.trainer.estimated_stepping_batches)
        warmup = round(self.warmup_fraction * total)
        return warmup_cosine(step, total, warmup, self.warmup_start, 1.0, self.final_lr_ratio)

    def configure_optimizers(self) -> Any:
        opt = self.make_optimizer()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class BYOL(MultiViewMethod):
    momentum = 0.99  # lightly's CIFAR-10 benchmark: constant

    def __init__(self, batch_size: int = 128) -> None:
        super().__init__(batch_size)
        self.projection_head = BYOLProjectionHead(512, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone).requires_grad_(False)
        self.projection_head_momentum = copy.deepcopy(self.projection_head).requires_grad_(False)
        self.criterion = NegativeCosineSimilarity()

    def encoders(self) -> dict[str, nn.Module]:
        return {"online": self.backbone, "target": self.backbone_momentum}

    def _online(self, x: Tensor) -> Tensor:
        return self.prediction_head(self.projection_head(self.pooled(x)))

    @torch.no_grad()
    def _target(self, x: Tensor) -> Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).mean(dim=(2, 3)))

    def loss(self, views: list[Tensor]) -> Tensor:
        x0, x1 = views
        # lightly's order: the momentum update opens the training step.
        ema_update(self.backbone, self.backbone_momentum, self.momentum)
        ema_update(self.projection_head, self.projection_head_momentum, self.momentum)
        return 0.5 * (
            self.criterion(self._online(x0), self._target(x1))
            + self.criterion(self._online(x1), self._target(x0))
        )

    def make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(
            params, lr=0.06 * self.batch_size / 128, momentum=0.9, weight_decay=5e-4
        )


class SimCLR(MultiViewMethod):
    def __init__(self, batch_size: int = 128) -> None:
        super().__init__(batch_size)
        self.projection_head = SimCLRProjectionHead(512, 512, 128)
        self.criterion = NTXentLoss(temperature=0.5)

    def loss(self, views: list[Tensor]) -> Tensor:
        z0, z1 = (self.projection_head(self.pooled(x)) for x in views)
        return self.criterion(z0, z1)

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            self.parameters(), lr=0.06 * self.batch_size / 128, momentum=0.9, weight_decay=5e-4
        )


class VICReg(MultiViewMethod):
    warmup_fraction = 0.1  # lightly's Imagenette benchmark: 20 warm-up epochs of 200

    def __init__(self, batch_size: int = 128) -> None:
        super().__init__(batch_size)
        self.projection_head = BarlowTwinsProjectionHead(512, 2048, 2048)
        self.criterion = VICRegLoss()

    def loss(self, views: list[Tensor]) -> Tensor:
        z0, z1 = (self.projection_head(self.pooled(x)) for x in views)
        return self.criterion(z0, z1)

    def make_optimizer(self) -> torch.optim.Optimizer:
        return LARS(
            self.parameters(), lr=0.3 * self.batch_size / 256, momentum=0.9, weight_decay=1e-4
        )


ViewKind = Literal["byol", "simclr", "vicreg", "lejepa", "lejepa_global4"]


class MultiViewDataModule(ImageFolderDataModule):
    """The shared ImageFolder DataModule (seeded, resumable) with a peer's own views: ``byol``
    (BYOL's asymmetric pair), ``simclr``, ``vicreg`` (``VICRegTransform``), ``lejepa`` (DINO's
    multi-crop as LeJEPA uses it: 2 global crops at the image size, 6 local at half of it) or
    ``lejepa_global4`` (LeJEPA's ViT example: 4 global crops, scale 0.08–1). No blur at 32 px."""

    def __init__(self, views: ViewKind = "byol", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.views = views

    @property
    def train_transform(self) -> Any:
        norm = {"mean": list(self.mean), "std": list(self.std)}
        size = self.image_size
        if self.views == "simclr":
            return SimCLRTransform(
                input_size=size, cj_strength=0.5, gaussian_blur=0.0, normalize=norm
            )
        if self.views == "vicreg":
            return VICRegTransform(input_size=size, gaussian_blur=0.0, normalize=norm)
        if self.views == "lejepa":
            return DINOTransform(
                global_crop_size=size, local_crop_size=size // 2, n_local_views=6,
                gaussian_blur=(0.0, 0.0, 0.0), normalize=norm,
            )  # fmt: skip
        if self.views == "lejepa_global4":
            view = DINOViewTransform(  # the example's jitter: 0.8/0.8/0.8/0.2 with p = 0.8
                crop_size=size, crop_scale=(0.08, 1.0), cj_strength=1.0, cj_sat=0.8,
                gaussian_blur=0.0, normalize=norm,
            )  # fmt: skip
            return MultiViewTransform([view] * 4)
        return BYOLTransform(
            BYOLView1Transform(input_size=size, gaussian_blur=0.0, normalize=norm),
            BYOLView2Transform(input_size=size, gaussian_blur=0.0, normalize=norm),
        )


#: name -> (module class, views)
BASELINES: dict[str, tuple[type[MultiViewMethod], ViewKind]] = {
    "byol": (BYOL, "byol"),
    "simclr": (SimCLR, "simclr"),
    "vicreg": (VICReg, "vicreg"),
}
