"""I-JEPA's regression loss on patch tokens."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def layer_norm_targets(tokens: Tensor) -> Tensor:
    """I-JEPA's target normalisation: LayerNorm over channels without affine parameters, in
    float32. ``(..., D) -> (..., D)``."""
    tokens = tokens.float()
    return F.layer_norm(tokens, (tokens.shape[-1],))


def ijepa_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Smooth-L1 (β = 1) between predicted and target patch tokens, averaged over every target
    patch of every block and image and over channels (the reference's
    ``F.smooth_l1_loss(z, h)``).

    NOTE: the I-JEPA paper (Assran et al., 2023, §3) writes the loss as a squared L2
    distance; its reference code (facebookresearch/ijepa, ``src/train.py``) uses smooth-L1,
    which we follow (``docs/c_jepa.md``).

    Args:
        prediction: ``(B, n_blocks, Nt, D)`` predictor outputs.
        target: ``(B, n_blocks, Nt, D)`` layer-normalised target-encoder tokens at the same
            patches (detached by the caller).

    Returns:
        Scalar loss (float32).
    """
    return F.smooth_l1_loss(prediction.float(), target.float(), beta=1.0)
