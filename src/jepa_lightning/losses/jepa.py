"""JEPA regression losses."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def normalized_smooth_l1(prediction: Tensor, target: Tensor, cells: Tensor) -> Tensor:
    """CNN-JEPA's loss: per cell, L2-normalise prediction and target over channels, take
    smooth-L1 (β = 1) summed over channels, and average over the selected cells only.

    For unit vectors every channel difference is below 1, so this equals
    ``0.5 · ||p̂ − t̂||² = 1 − cos(p, t)`` per cell.

    Args:
        prediction: ``(B, C, h, w)`` predictor output.
        target: ``(B, C, h, w)`` target-encoder features (detached by the caller).
        cells: ``(B, h, w)`` bool, the target cells the loss averages over.

    Returns:
        Scalar loss (float32).
    """
    p = F.normalize(prediction.float(), dim=1)  # (B, C, h, w)
    t = F.normalize(target.float(), dim=1)
    per_cell = F.smooth_l1_loss(p, t, beta=1.0, reduction="none").sum(dim=1)  # (B, h, w)
    w = cells.to(per_cell.dtype)
    return (per_cell * w).sum() / w.sum().clamp_min(1.0)


class NormalizedSmoothL1Loss(nn.Module):
    """Module wrapper of :func:`normalized_smooth_l1`."""

    def forward(self, prediction: Tensor, target: Tensor, cells: Tensor) -> Tensor:
        return normalized_smooth_l1(prediction, target, cells)
