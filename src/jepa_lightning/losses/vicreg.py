"""VICReg's variance, invariance and covariance terms (Bardes et al., 2022) on ``(B, D)``
embeddings, for any JEPA that wants them as a regulariser (C-JEPA; CNN-JEPA variants).

The three term functions are lightly's (``lightly.loss.vicreg_loss``), whose source matches the
VICReg reference code: invariance ``s = mean‖z_a − z_b‖² / D`` (MSE), variance
``v = mean_d max(0, 1 − √(Var(z_d) + ε))`` with the unbiased variance and ε = 1e-4, covariance
``c = Σ_{i≠j} C(z)_{ij}² / D`` with ``C`` the unbiased covariance matrix. Under DDP the variance
and covariance see the **global** batch: the embeddings are all-gathered with gradients
(lightly's ``GatherLayer``; an ``all_reduce`` of statistics would cut the gradient, lightly
#979). The invariance is per sample and stays local (DDP averages it).
"""

from __future__ import annotations

from itertools import combinations
from typing import NamedTuple

import torch
from lightly.loss.vicreg_loss import covariance_loss, invariance_loss, variance_loss
from torch import Tensor

from jepa_lightning.losses.regularizer import Regularizer, gather_batch

__all__ = ["VICRegOutput", "VICRegTerms", "gather_batch"]


class VICRegOutput(NamedTuple):
    """The weighted sum and the unweighted terms (0-dim float32 tensors)."""

    loss: Tensor
    invariance: Tensor
    variance: Tensor
    covariance: Tensor

    def scalars(self) -> dict[str, Tensor]:
        """The four values under the names the methods log them with."""
        return {
            "vicreg_loss": self.loss,
            "vic_invariance": self.invariance,
            "vic_variance": self.variance,
            "vic_covariance": self.covariance,
        }


class VICRegTerms(Regularizer):
    """VICReg on one or more ``(B, D)`` embeddings ("branches") of the same images.

    ``loss = sim_weight · invariance + std_weight · variance + cov_weight · covariance`` with

    * ``invariance`` — mean over branch pairs of lightly's ``invariance_loss`` (0 for one
      branch);
    * ``variance`` — mean over branches of lightly's ``variance_loss`` (on the global batch);
    * ``covariance`` — sum over branches of lightly's ``covariance_loss`` (on the global batch).

    For two branches this is exactly VICReg's loss as its reference code and lightly's
    ``VICRegLoss`` compute it (variance averaged, covariance summed over the two branches).
    Computed in float32 with autocast off, whatever the trainer's precision.

    Args:
        sim_weight: Weight λ of the invariance term (VICReg: 25).
        std_weight: Weight μ of the variance term (VICReg: 25).
        cov_weight: Weight ν of the covariance term (VICReg: 1).
        eps: ε inside the square root of the variance term.
        gather_distributed: Compute variance and covariance over the batch of all processes.

    Example:
        >>> import torch
        >>> from jepa_lightning.losses import VICRegTerms
        >>> z_a, z_b = torch.randn(8, 16), torch.randn(8, 16)  # two (B, D) branches
        >>> out = VICRegTerms()(z_a, z_b)
        >>> sorted(out.scalars())
        ['vic_covariance', 'vic_invariance', 'vic_variance', 'vicreg_loss']
        >>> VICRegTerms(sim_weight=0.0)(z_a).invariance  # one branch: variance + covariance
        tensor(0.)
    """

    def __init__(
        self,
        sim_weight: float = 25.0,
        std_weight: float = 25.0,
        cov_weight: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.sim_weight = sim_weight
        self.std_weight = std_weight
        self.cov_weight = cov_weight
        self.eps = eps
        self.gather_distributed = gather_distributed

    @property
    def is_zero(self) -> bool:
        """All three weights are 0: the sum is identically 0 (callers skip computing it)."""
        return self.sim_weight == 0 and self.std_weight == 0 and self.cov_weight == 0

    def terms(self, zs: Tensor, step: int) -> VICRegOutput:
        """The three terms of the branches ``zs`` ``(n, B, D)`` (no random draws: ``step`` is
        unused)."""
        pairs = list(combinations(range(zs.shape[0]), 2))
        invariance = (
            torch.stack([invariance_loss(zs[i], zs[j]) for i, j in pairs]).mean()
            if pairs
            else zs.new_zeros(())
        )
        full = gather_batch(zs, dim=1) if self.gather_distributed else zs  # (n, W·B, D)
        variance = torch.stack([variance_loss(z, eps=self.eps) for z in full]).mean()
        covariance = torch.stack([covariance_loss(z) for z in full]).sum()
        loss = (
            self.sim_weight * invariance + self.std_weight * variance + self.cov_weight * covariance
        )
        return VICRegOutput(loss, invariance, variance, covariance)
