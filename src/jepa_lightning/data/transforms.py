"""The minimal JEPA augmentation and the evaluation transform (torchvision ``transforms.v2``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def ssl_transform(
    image_size: int,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    hflip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """CNN-JEPA's one-view augmentation: RandomResizedCrop (bicubic) + flip + normalise.

    Accepts PIL images or uint8 tensors ``(3, H, W)`` and returns float ``(3, S, S)``.
    """
    ops: list[v2.Transform] = [
        v2.ToImage(),
        v2.RandomResizedCrop(
            image_size,
            scale=crop_scale,
            interpolation=v2.InterpolationMode.BICUBIC,
            antialias=True,
        ),
    ]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


def eval_transform(
    image_size: int,
    resize_ratio: float = 256 / 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Resize the short side to ``image_size · resize_ratio``, centre-crop, normalise."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(
                round(image_size * resize_ratio),
                interpolation=v2.InterpolationMode.BICUBIC,
                antialias=True,
            ),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
