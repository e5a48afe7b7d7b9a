"""What more than one benchmark needs: CIFAR-10 as ``ImageFolderDataModule`` arguments (the
learning curves' data and evaluation) and the reference BYOL step (``speed.throughput`` times it;
``curves.learning_curve`` times it to scale its budget to the machine)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import torch
import torchvision
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
from torch import Tensor, nn

from jepa_lightning.callbacks.ema import ema_update

SHARED_TAR = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpg.tar.gz"
CACHE = Path.home() / ".cache/jepa-lightning"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def cifar_root(data: str | None) -> Path:
    if data:
        return Path(data).expanduser()
    root = CACHE / "cifar10_jpg"
    if not (root / "train").is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED_TAR) as tar:
            tar.extractall(CACHE, filter="data")
    return root


def cifar_datamodule_args(data: str | None, batch_size: int, workers: int) -> dict[str, Any]:
    """``ImageFolderDataModule`` arguments for CIFAR-10 at 32 px (train/test split, no resize)."""
    return dict(
        root=str(cifar_root(data)),
        val_split="test",
        image_size=32,
        batch_size=batch_size,
        num_workers=workers,
        eval_resize_ratio=1.0,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )


def trunk(arch: str, small_images: bool) -> nn.Module:
    """torchvision ResNet without classifier, pooled: (B, 3, H, W) -> (B, C)."""
    net = getattr(torchvision.models, arch)()
    if small_images:
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


class Byol(nn.Module):
    def __init__(self, arch: str, small: bool) -> None:
        super().__init__()
        self.backbone = trunk(arch, small)
        dim = self.backbone(torch.zeros(2, 3, 32, 32)).shape[1]
        self.projection = BYOLProjectionHead(dim, 4096, 256)
        self.prediction = BYOLPredictionHead(256, 4096, 256)
        self.backbone_t = trunk(arch, small).requires_grad_(False)
        self.projection_t = BYOLProjectionHead(dim, 4096, 256).requires_grad_(False)
        self.criterion = NegativeCosineSimilarity()

    def loss(self, x0: Tensor, x1: Tensor) -> Tensor:
        p0 = self.prediction(self.projection(self.backbone(x0)))
        p1 = self.prediction(self.projection(self.backbone(x1)))
        with torch.no_grad():
            z0 = self.projection_t(self.backbone_t(x0))
            z1 = self.projection_t(self.backbone_t(x1))
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    def ema(self) -> None:
        ema_update(self.backbone, self.backbone_t, 0.99)
        ema_update(self.projection, self.projection_t, 0.99)
