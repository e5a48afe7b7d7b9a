"""JEPA regression losses."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

TargetNorm = Literal["none", "layer", "batch", "batch_position"]

#: Dimensions of a ``(B, C, h, w)`` target map each normalisation takes statistics over.
_NORM_DIMS: dict[str, tuple[int, ...]] = {
    "layer": (1,),  # channels of each cell (I-JEPA's LayerNorm without affine)
    "batch": (0, 2, 3),  # every cell of every image, per channel
    "batch_position": (0,),  # every image, per channel and cell
}


def check_target_norm(kind: str) -> None:
    """Raise ``ValueError`` naming the valid choices if ``kind`` is not a :data:`TargetNorm`."""
    if kind != "none" and kind not in _NORM_DIMS:
        raise ValueError(f"Unknown target_norm {kind!r}; use one of none, {', '.join(_NORM_DIMS)}.")


def normalize_targets(target: Tensor, kind: TargetNorm = "none", eps: float = 1e-6) -> Tensor:
    """Standardise a ``(B, C, h, w)`` target map before the loss (float32).

    * ``none`` — unchanged (the CNN-JEPA paper).
    * ``layer`` — per cell over channels, as I-JEPA's LayerNorm without affine.
    * ``batch`` — per channel over the batch and all cells: removes the batch-mean direction,
      the part of every target that does not depend on the image.
    * ``batch_position`` — per channel and cell over the batch: removes the batch mean *and*
      what the cell's position alone predicts, leaving only what depends on the image.

    The ``batch*`` statistics are those of the local batch (per process under DDP, like
    BatchNorm without sync); they need a batch of at least 2 images.
    """
    check_target_norm(kind)
    if kind == "none":
        return target.float()
    t = target.float()
    var, mean = torch.var_mean(t, dim=_NORM_DIMS[kind], keepdim=True, correction=0)
    return (t - mean) * torch.rsqrt(var + eps)


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
