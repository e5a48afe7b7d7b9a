"""SIGReg (LeJEPA, Balestriero & LeCun, arXiv 2511.08544) as a JEPA regulariser.

For ``K`` random unit directions ``a`` the 1-D Epps–Pulley statistic of ``aᵀz`` against N(0, 1),
``EP = N · ∫ |φ̂(t) − e^{−t²/2}|² e^{−t²/2} dt`` with ``φ̂(t) = mean_n exp(i t aᵀz_n)``, by the
trapezoid rule on 17 knots of ``t ∈ [0, 3]`` (the integrand is even: integrate [0, 3], double),
averaged over the directions and over the branches ("per view"). The maths is lightly's
``lightly.loss.lejepa_loss.SIGReg``; under DDP it all-reduces the per-rank sums of cos and sin
with autograd-aware collectives (lightly #1923; ``tests/losses/test_regularizers_ddp.py``
checks that loss and gradient equal one process's on the global batch) and counts the global ``N``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from lightly.loss.lejepa_loss import SIGReg, lejepa_invariance_loss
from torch import Tensor

from jepa_lightning.losses.regularizer import Regularizer


class SIGRegOutput(NamedTuple):
    """The weighted sum and the unweighted terms (0-dim float32 tensors)."""

    loss: Tensor
    invariance: Tensor
    statistic: Tensor

    def scalars(self) -> dict[str, Tensor]:
        """The three values under the names the methods log them with."""
        return {
            "sigreg_loss": self.loss,
            "sigreg_invariance": self.invariance,
            "sigreg_statistic": self.statistic,
        }


def unit_directions(
    num_features: int,
    num_vectors: int,
    seed: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(num_features, num_vectors)`` random unit directions (the columns), drawn as lightly's
    ``SIGReg`` draws them — a standard normal matrix with normalised columns — but from a
    generator seeded with ``seed`` on ``device``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(num_features, num_vectors, generator=generator, device=device, dtype=dtype)
    return a.div_(a.norm(p=2, dim=0))


class SeededSIGReg(SIGReg):
    """lightly's :class:`~lightly.loss.lejepa_loss.SIGReg` whose directions are
    :func:`unit_directions` of :attr:`direction_seed` (set before each call).

    NOTE: lightly draws the directions with ``torch.randn`` on the global RNG and, under DDP,
    broadcasts rank 0's. They then depend on every earlier draw of the process (initialisation,
    augmentation, dropout), which a checkpoint does not hold, so they cannot continue exactly
    after a resume, and each step pays a broadcast. Overriding ``_generate_unit_vectors``
    (lightly's own hook for it) keeps the rest of lightly's maths. Its frequency grid and
    trapezoid weights are made non-persistent buffers: they follow from ``knots`` and ``t_max``,
    and a checkpoint without them loads into a model built without the regulariser.
    """

    direction_seed: int = 0

    def __init__(self, **kwargs: int | float | bool) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        for name in ("t", "phi", "weights"):
            value = getattr(self, name)
            delattr(self, name)
            self.register_buffer(name, value, persistent=False)

    def _generate_unit_vectors(
        self, device: torch.device, dtype: torch.dtype, num_features: int
    ) -> Tensor:
        return unit_directions(num_features, self.num_vectors, self.direction_seed, device, dtype)


class SIGRegTerms(Regularizer):
    """SIGReg on one or more ``(B, D)`` embeddings ("branches") of the same images.

    ``loss = statistic + sim_weight · invariance`` with

    * ``statistic`` — lightly's ``SIGReg`` on the stacked branches ``(n, B, D)``: the
      Epps–Pulley statistic per branch and direction, averaged (on the global batch);
    * ``invariance`` — lightly's ``lejepa_invariance_loss`` with every branch a global view:
      the mean squared distance of each branch to the branches' mean (0 for one branch; per
      sample, local under DDP).

    The directions are drawn at every call from a generator seeded by ``(seed, step)``
    (:meth:`~jepa_lightning.losses.regularizer.Regularizer.direction_seed`): the same on every
    rank, unaffected by the global RNG, and exactly continued after a resume. Computed in
    float32 with autocast off.

    NOTE: LeJEPA's loss is ``(1 − λ) · L_inv + λ · SIGReg`` with λ = 0.02–0.05; a JEPA method
    adds ``regularizer_weight · loss`` to its own loss (weight 1) instead, so
    ``regularizer_weight = λ / (1 − λ)`` gives LeJEPA's ratio (≈ λ). LeJEPA applies SIGReg to a
    projector's output (an MLP with BatchNorm: the methods' ``regularizer_projector``).

    Args:
        num_vectors: Number ``K`` of random directions per call (LeJEPA: 256–1024).
        knots: Knots of the trapezoid rule on ``[0, t_max]`` (LeJEPA: 17).
        t_max: Upper end of the frequency grid (LeJEPA: 3).
        sim_weight: Weight of LeJEPA's invariance term between branches (0: none, one view).
        seed: Seed of the random directions.
        gather_distributed: Compute the statistic over the batch of all processes (LeJEPA's
            setting; ``False``: per process, each rank with its own directions).

    Example:
        >>> import torch
        >>> from jepa_lightning.losses import SIGRegTerms
        >>> sigreg = SIGRegTerms(num_vectors=64)
        >>> z = torch.randn(256, 32)  # (B, D): already isotropic Gaussian
        >>> out = sigreg(z, step=0)
        >>> sorted(out.scalars())
        ['sigreg_invariance', 'sigreg_loss', 'sigreg_statistic']
        >>> bool(out.statistic < sigreg(0.1 * z + 1.0, step=0).statistic)  # far from N(0, I)
        True
        >>> torch.equal(out.loss, sigreg(z, step=0).loss)  # same step, same directions
        True
    """

    def __init__(
        self,
        num_vectors: int = 1024,
        knots: int = 17,
        t_max: float = 3.0,
        sim_weight: float = 0.0,
        seed: int = 0,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.sim_weight = sim_weight
        self.seed = seed
        self.gather_distributed = gather_distributed
        self.sigreg = SeededSIGReg(
            knots=knots, t_max=t_max, num_vectors=num_vectors, gather_distributed=gather_distributed
        )

    def directions(
        self, num_features: int, step: int, device: torch.device | str = "cpu"
    ) -> Tensor:
        """The ``(num_features, num_vectors)`` unit directions used at training step ``step``."""
        return unit_directions(
            num_features, self.sigreg.num_vectors, self.direction_seed(step), device
        )

    def terms(self, zs: Tensor, step: int) -> SIGRegOutput:
        """SIGReg of the branches ``zs`` ``(n, B, D)`` at training step ``step``."""
        self.sigreg.direction_seed = self.direction_seed(step)
        statistic = self.sigreg(zs)  # mean over branches and directions
        invariance = (
            lejepa_invariance_loss(all_proj=zs, global_proj=zs)
            if zs.shape[0] > 1
            else zs.new_zeros(())
        )
        return SIGRegOutput(statistic + self.sim_weight * invariance, invariance, statistic)
