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
    color_jitter: float = 0.0,
    grayscale: float = 0.0,
) -> v2.Compose:
    """CNN-JEPA's one-view augmentation: RandomResizedCrop (bicubic) + flip + normalise, and
    optionally colour jitter and grayscale (:func:`photometric_ops`; off by default, as the paper).

    Accepts PIL images or uint8 tensors ``(3, H, W)`` and returns float ``(3, S, S)``.
    """
    return v2.Compose(
        geometric_ops(image_size, crop_scale, hflip)
        + photometric_ops(color_jitter, grayscale, mean, std)
    )


def geometric_ops(
    image_size: int, crop_scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True
) -> list[v2.Transform]:
    """To image, RandomResizedCrop (bicubic) and horizontal flip."""
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
    return ops


def photometric_ops(
    color_jitter: float = 0.0,
    grayscale: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> list[v2.Transform]:
    """Colour jitter of strength ``s`` (brightness, contrast, saturation ``0.8 s``, hue
    ``0.2 s``, applied with p = 0.8, as SimCLR and lightly's transforms; lightly's CIFAR-10
    benchmarks use ``s = 0.5``), grayscale with probability ``grayscale``, then float and
    normalise. ``s = 0`` and ``grayscale = 0`` leave the colours alone."""
    ops: list[v2.Transform] = []
    if color_jitter > 0:
        s = color_jitter
        jitter = v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, min(0.5, 0.2 * s))
        ops.append(v2.RandomApply([jitter], p=0.8))
    if grayscale > 0:
        ops.append(v2.RandomGrayscale(p=grayscale))
    return [*ops, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


class SharedCropViews:
    """Views of one image that share a single crop and flip and differ only in colour: the
    first view gets no photometric augmentation, the others each their own
    (``photometric_ops(color_jitter, grayscale)``). Their feature-grid cells see the same image
    regions, so one view's cells can be the regression targets of another's (CNN-JEPA with
    ``context_view="other"``).

    Example:
        >>> import torch
        >>> views = SharedCropViews(16, num_views=2, color_jitter=0.5)(
        ...     torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8))
        >>> [tuple(v.shape) for v in views]
        [(3, 16, 16), (3, 16, 16)]
    """

    def __init__(
        self,
        image_size: int,
        num_views: int = 2,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        hflip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        color_jitter: float = 0.0,
        grayscale: float = 0.0,
    ) -> None:
        self.geometric = v2.Compose(geometric_ops(image_size, crop_scale, hflip))
        self.clean = v2.Compose(photometric_ops(0.0, 0.0, mean, std))
        self.augment = v2.Compose(photometric_ops(color_jitter, grayscale, mean, std))
        self.num_views = num_views

    def __call__(self, image: object) -> list[torch.Tensor]:
        crop = self.geometric(image)  # uint8 (3, S, S)
        return [self.clean(crop)] + [self.augment(crop) for _ in range(self.num_views - 1)]


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
