"""What every anti-collapse regulariser of the JEPA methods' one regulariser slot shares
(:class:`~jepa_lightning.losses.VICRegTerms`, :class:`~jepa_lightning.losses.SIGRegTerms`,
:class:`~jepa_lightning.losses.VISRegTerms`): ``(B, D)`` branches in, float32 terms out, the
global batch under DDP, and random directions that are a pure function of ``(seed, step)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
import torch.distributed as dist
from lightly.utils.dist import gather
from torch import Tensor, nn

from jepa_lightning.seeding import DIRECTIONS, derive_seed


def gather_batch(z: Tensor, dim: int = 0) -> Tensor:
    """Concatenate ``z`` from every process along ``dim``, with gradients flowing back to each
    process's own slice (identity without an initialised process group of size > 1)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    return torch.cat(gather(z.contiguous()), dim=dim)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@contextmanager
def seeded_default_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the default generator of ``device`` with ``seed`` for the block, then restore it
    (and the CPU generator): for library code that draws from the global RNG and takes no
    ``generator`` argument. Draws outside the block are unaffected."""
    accelerator = device.type != "cpu"  # (the CPU generator is always forked)
    devices, kind = ([device], device.type) if accelerator else ([], "cuda")
    with torch.random.fork_rng(devices=devices, device_type=kind):
        if not accelerator:
            torch.default_generator.manual_seed(seed)
        elif device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            torch.cuda.default_generators[index].manual_seed(seed)
        else:  # single-device backends (mps, ...)
            torch.get_device_module(device.type).manual_seed(seed)
        yield


class RegularizerOutput(Protocol):
    """What a regulariser returns: the weighted sum and the scalars to log."""

    loss: Tensor

    def scalars(self) -> dict[str, Tensor]: ...


class Regularizer(nn.Module):
    """Base class of the regularisers the JEPA methods take in their ``regularizer`` slot.

    A subclass implements :meth:`terms` on the stacked branches ``(n, B, D)`` (float32, autocast
    off); :meth:`forward` takes the branches as separate ``(B, D)`` tensors, checks them and
    passes the training step on, from which random directions are drawn
    (:meth:`direction_seed`).

    Attributes:
        sim_weight: Weight of the regulariser's invariance term between branches (0: none; a
            method then needs only one view for it).
        seed: Seed of the random directions.
        gather_distributed: Compute the batch statistics over the batch of all processes.
    """

    sim_weight: float = 0.0
    seed: int = 0
    gather_distributed: bool = True

    @property
    def is_zero(self) -> bool:
        """The sum is identically 0 (callers skip computing it)."""
        return False

    @property
    def compares_views(self) -> bool:
        """The invariance term is on: the branches must be views of the same images."""
        return self.sim_weight != 0

    def direction_seed(self, step: int) -> int:
        """Seed of the random directions at training step ``step``: a pure function of
        ``(seed, step)``, the same on every rank (which the global batch statistics need) and
        after resuming; with ``gather_distributed=False`` each rank draws its own."""
        if self.gather_distributed:
            return derive_seed(DIRECTIONS, self.seed, step)
        return derive_seed(DIRECTIONS, self.seed, step, _rank())

    def forward(self, *embeddings: Tensor, step: int = 0) -> RegularizerOutput:
        """The terms of one or more ``(B, D)`` branches at training step ``step``."""
        name = type(self).__name__
        if not embeddings or any(z.ndim != 2 for z in embeddings):
            raise ValueError(f"{name} expects one or more (B, D) embeddings")
        with torch.autocast(embeddings[0].device.type, enabled=False):
            zs = torch.stack([z.float() for z in embeddings])  # (n, B, D)
            if zs.shape[1] < 2:
                raise ValueError(f"{name} needs at least 2 samples per batch")
            return self.terms(zs, step)

    def terms(self, zs: Tensor, step: int) -> RegularizerOutput:
        """The regulariser on the stacked branches ``zs`` ``(n, B, D)``, float32."""
        raise NotImplementedError
