"""VISReg (Wu et al., arXiv 2606.02572) as a JEPA regulariser, built from lightly's term
functions (``lightly.loss.visreg_loss``): VICReg's per-dimension scale term, a centring term,
and a sliced shape term (sorted projections on random directions against Gaussian quantiles,
a closed-form 1-D Wasserstein distance) in place of VICReg's covariance.
"""

from __future__ import annotations

from typing import NamedTuple

from lightly.loss.lejepa_loss import lejepa_invariance_loss
from lightly.loss.visreg_loss import visreg_center_loss, visreg_scale_loss, visreg_shape_loss
from torch import Tensor

from jepa_lightning.losses.regularizer import Regularizer, gather_batch, seeded_default_rng


class VISRegOutput(NamedTuple):
    """The weighted sum and the unweighted terms (0-dim float32 tensors)."""

    loss: Tensor
    invariance: Tensor
    scale: Tensor
    shape: Tensor
    center: Tensor

    def scalars(self) -> dict[str, Tensor]:
        """The five values under the names the methods log them with."""
        return {
            "visreg_loss": self.loss,
            "vis_invariance": self.invariance,
            "vis_scale": self.scale,
            "vis_shape": self.shape,
            "vis_center": self.center,
        }


class VISRegTerms(Regularizer):
    """VISReg on one or more ``(B, D)`` embeddings ("branches") of the same images.

    ``loss = sim_weight · invariance + scale_weight · scale + shape_weight · shape +
    center_weight · center``, the terms lightly's ``VISRegLoss`` computes, on the stacked
    branches ``(n, B, D)`` (each branch's batch its own sample set):

    * ``scale`` — ``visreg_scale_loss``: mean over dimensions of ``(1 − std)²``;
    * ``shape`` — ``visreg_shape_loss``: standardised embeddings (std detached) projected on
      ``num_slices`` random unit directions, sorted, against N(0, 1) quantiles;
    * ``center`` — ``visreg_center_loss``: squared batch mean;
    * ``invariance`` — ``lejepa_invariance_loss`` with every branch a global view (0 for one
      branch), per sample (local under DDP, as in ``VISRegLoss``).

    Computed in float32 with autocast off.

    NOTE: VISReg's paper (and lightly's ``VISRegLoss`` by default) computes the terms on each
    device's own batch with its own slices. By default (``gather_distributed=True``) the terms
    here see the global batch, all-gathered with gradients, and every rank draws the same
    slices, so that DDP computes exactly what one process computes on the global batch;
    ``gather_distributed=False`` gives the paper's per-device setting (slices seeded per rank).
    Its loss is ``(1 − λ) · L_inv + λ · reg`` (λ = 0.9 on ImageNet, 0.6 on small data sets); a
    JEPA method adds ``regularizer_weight · loss`` to its own loss (weight 1) instead, so
    ``regularizer_weight = λ / (1 − λ)`` gives VISReg's ratio.

    Args:
        scale_weight: Weight of the scale term (lightly: 1).
        shape_weight: Weight of the shape term (lightly: 1).
        center_weight: Weight of the centring term (lightly: 1).
        sim_weight: Weight of the invariance term between branches (0: none, one view).
        num_slices: Random directions of the shape term per call (lightly: 4096).
        eps: Added to the standard deviation before standardising (shape term).
        seed: Seed of the random directions.
        gather_distributed: Compute the terms over the batch of all processes.

    Example:
        >>> import torch
        >>> from jepa_lightning.losses import VISRegTerms
        >>> visreg = VISRegTerms(num_slices=64)
        >>> z = torch.randn(256, 32)  # (B, D)
        >>> out = visreg(z, step=0)
        >>> sorted(out.scalars())
        ['vis_center', 'vis_invariance', 'vis_scale', 'vis_shape', 'visreg_loss']
        >>> collapsed = visreg(0.01 * z, step=0)  # the scale term still pushes back
        >>> bool(collapsed.scale > 0.9 and out.scale < 0.01)
        True
    """

    def __init__(
        self,
        scale_weight: float = 1.0,
        shape_weight: float = 1.0,
        center_weight: float = 1.0,
        sim_weight: float = 0.0,
        num_slices: int = 4096,
        eps: float = 1e-4,
        seed: int = 0,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        if num_slices < 1 or eps <= 0:
            raise ValueError(f"num_slices must be >= 1 and eps > 0, got {num_slices}, {eps}")
        self.scale_weight = scale_weight
        self.shape_weight = shape_weight
        self.center_weight = center_weight
        self.sim_weight = sim_weight
        self.num_slices = num_slices
        self.eps = eps
        self.seed = seed
        self.gather_distributed = gather_distributed

    @property
    def is_zero(self) -> bool:
        """All four weights are 0: the sum is identically 0 (callers skip computing it)."""
        weights = (self.scale_weight, self.shape_weight, self.center_weight, self.sim_weight)
        return all(w == 0 for w in weights)

    def terms(self, zs: Tensor, step: int) -> VISRegOutput:
        """VISReg of the branches ``zs`` ``(n, B, D)`` at training step ``step``."""
        invariance = (
            lejepa_invariance_loss(all_proj=zs, global_proj=zs)
            if zs.shape[0] > 1
            else zs.new_zeros(())
        )
        full = gather_batch(zs, dim=1) if self.gather_distributed else zs  # (n, W·B, D)
        scale = visreg_scale_loss(full)
        center = visreg_center_loss(full)
        # NOTE: lightly's visreg_shape_loss draws its slices with torch.randn on the global RNG
        # and takes no generator; seeding (and restoring) the device's default generator around
        # the call makes the slices a pure function of (seed, step), the same on every rank.
        with seeded_default_rng(full.device, self.direction_seed(step)):
            shape = visreg_shape_loss(full, num_slices=self.num_slices, eps=self.eps)
        loss = (
            self.sim_weight * invariance
            + self.scale_weight * scale
            + self.shape_weight * shape
            + self.center_weight * center
        )
        return VISRegOutput(loss, invariance, scale, shape, center)
