"""What a batch of the DataModules holds, for the methods, evaluations and callbacks."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def split_batch(batch: Any, num_views: int = 1) -> tuple[Tensor, Tensor | None]:
    """``images`` or ``(images, labels, ...)`` -> ``(images, labels | None)``.

    ``images`` may be a list of augmented views of the same images
    (``SSLDataModule(num_views=2)``): with ``num_views == 1`` the first view ``(B, 3, H, W)``
    is returned (the others are dropped before any compute), else the first ``num_views``
    views stacked ``(B, V, 3, H, W)``. A single tensor is returned as it is.

    Example:
        >>> import torch
        >>> views, labels = [torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)], torch.tensor([0, 1])
        >>> split_batch([views, labels])[0].shape
        torch.Size([2, 3, 8, 8])
        >>> split_batch([views, labels], num_views=2)[0].shape
        torch.Size([2, 2, 3, 8, 8])
    """
    if isinstance(batch, Tensor):
        return batch, None
    images = batch[0]
    if isinstance(images, (list, tuple)):  # several views of the same images
        images = images[0] if num_views == 1 else torch.stack(list(images[:num_views]), dim=1)
    return images, (batch[1] if len(batch) > 1 else None)
