"""Mask generators on a 2-D feature grid (CNN-JEPA, arXiv 2408.07514, Sec. 3).

Every generator maps ``(batch_size, height, width)`` to a pair of boolean tensors of shape
``(B, H, W)``:

* ``context`` — ``True`` where the cell is visible to the context encoder;
* ``target`` — ``True`` where the predictor's output is regressed onto the target encoder's.

Context and target are always disjoint. Generation is vectorised over the batch (no Python loop
over images) and draws only from the ``torch.Generator`` it is given, so a seeded generator
reproduces the masks exactly. Masks are produced on the generator's device (the CPU by default)
and are tiny, so the training step copies them to the accelerator without a host sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GridMasks:
    """Context and target masks of one batch.

    Attributes:
        context: ``(B, H, W)`` bool, ``True`` = visible to the context encoder.
        target: ``(B, H, W)`` bool, ``True`` = cell whose target features are regressed.
    """

    context: Tensor
    target: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = True) -> GridMasks:
        return GridMasks(
            self.context.to(device, non_blocking=non_blocking),
            self.target.to(device, non_blocking=non_blocking),
        )


class MaskGenerator:
    """Base class: subclasses implement :meth:`__call__`."""

    def __call__(
        self, batch_size: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> GridMasks:
        raise NotImplementedError

    def validate_grid(self, height: int, width: int) -> None:
        """Raise ``ValueError`` if the settings cannot be satisfied on a ``height × width`` grid."""


def _uniform(low: float, high: float, generator: torch.Generator | None, n: int = 1) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def block_shape_rounded_sides(
    scale: float, aspect: float, height: int, width: int
) -> tuple[int, int]:
    """Block ``(h, w)`` in cells for a scale and aspect ratio, clipped to the grid: each side
    rounded on its own, ``h = round(√(area · aspect))``, ``w = round(√(area / aspect))``, as
    the CNN-JEPA and I-JEPA reference samplers do. (The ViT masking rounds ``w`` from the area
    instead: :func:`~jepa_lightning.masking.ijepa.block_shape_keep_area`.)"""
    area = scale * height * width
    h = max(1, min(height, round(math.sqrt(area * aspect))))
    w = max(1, min(width, round(math.sqrt(area / aspect))))
    return h, w


class MultiBlockMasking(MaskGenerator):
    """I-JEPA-style multi-block masking as used by CNN-JEPA.

    Per batch, one block shape is drawn per block index (scale and aspect ratio, each uniform
    in its range as I-JEPA draws them, shared by every image so that all images mask a similar
    area); block positions are drawn independently per image and every cell, the last row and
    column included, can be covered. Blocks may overlap. The target is the union of the blocks
    and the context its complement.

    With ``shared_shape=True`` all blocks of the batch get one shape, drawn as the CNN-JEPA
    reference code does: a single uniform ``u`` sets both the scale and the aspect ratio
    (``low + u · (high − low)`` each), so large blocks are also tall ones.

    NOTE: when the union leaves fewer than ``min_context`` visible cells for an image, the
    reference resamples in a Python loop. We instead keep, for that image only, the largest
    prefix of its blocks that leaves ``min_context`` cells visible — vectorised and without a
    host sync. With the paper's settings on a 7×7 grid this affects well under 1 % of images.

    Args:
        num_blocks: Number of target blocks per image.
        block_scale: Range of the fraction of grid cells one block covers.
        aspect_ratio: Range of block height / width.
        min_context: Minimum number of visible context cells per image.
        shared_shape: One block shape for every block of the batch, as the reference code.
    """

    def __init__(
        self,
        num_blocks: int = 4,
        block_scale: tuple[float, float] = (0.15, 0.2),
        aspect_ratio: tuple[float, float] = (0.75, 1.5),
        min_context: int = 5,
        shared_shape: bool = False,
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if not 0 < block_scale[0] <= block_scale[1] < 1:
            raise ValueError(f"block_scale must satisfy 0 < low <= high < 1, got {block_scale}")
        if not 0 < aspect_ratio[0] <= aspect_ratio[1]:
            raise ValueError(f"aspect_ratio must satisfy 0 < low <= high, got {aspect_ratio}")
        self.num_blocks = num_blocks
        self.block_scale = tuple(block_scale)
        self.aspect_ratio = tuple(aspect_ratio)
        self.min_context = min_context
        self.shared_shape = shared_shape

    def sample_shapes(
        self, height: int, width: int, generator: torch.Generator | None = None
    ) -> list[tuple[int, int]]:
        """The ``(h, w)`` of each of the batch's ``num_blocks`` blocks."""
        n = self.num_blocks
        if self.shared_shape:  # the reference: one draw sets scale and aspect of every block
            u = torch.rand(1, generator=generator).expand(n)
            (s0, s1), (a0, a1) = self.block_scale, self.aspect_ratio
            scales, aspects = s0 + u * (s1 - s0), a0 + u * (a1 - a0)
        else:  # I-JEPA: scale and aspect ratio uniform, independently per block index
            scales = _uniform(*self.block_scale, generator, n)
            aspects = _uniform(*self.aspect_ratio, generator, n)
        return [
            block_shape_rounded_sides(float(s), float(a), height, width)
            for s, a in zip(scales, aspects, strict=True)
        ]

    def validate_grid(self, height: int, width: int) -> None:
        h, w = block_shape_rounded_sides(self.block_scale[1], self.aspect_ratio[1], height, width)
        h2, w2 = block_shape_rounded_sides(self.block_scale[1], self.aspect_ratio[0], height, width)
        largest = max(h * w, h2 * w2)
        if height * width - largest < self.min_context:
            raise ValueError(
                f"Mask settings cannot be satisfied on a {height}x{width} grid: one target block "
                f"of scale {self.block_scale[1]} covers up to {largest} cells, leaving fewer than "
                f"min_context={self.min_context} visible. Lower block_scale or min_context, or use "
                "larger images / a backbone with a smaller stride for a finer grid."
            )

    def __call__(
        self, batch_size: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> GridMasks:
        self.validate_grid(height, width)
        n = self.num_blocks
        shapes = self.sample_shapes(height, width, generator)
        bh = torch.tensor([s[0] for s in shapes])  # (n,)
        bw = torch.tensor([s[1] for s in shapes])  # (n,)
        # Top-left corner uniform over all valid positions, upper bound inclusive.
        u = torch.rand(batch_size, n, 2, generator=generator)  # (B, n, 2)
        top = (u[..., 0] * (height - bh + 1)).floor().long()  # (B, n)
        left = (u[..., 1] * (width - bw + 1)).floor().long()  # (B, n)
        rows = torch.arange(height)
        cols = torch.arange(width)
        in_rows = (rows >= top[..., None]) & (rows < (top + bh)[..., None])  # (B, n, H)
        in_cols = (cols >= left[..., None]) & (cols < (left + bw)[..., None])  # (B, n, W)
        blocks = in_rows[..., :, None] & in_cols[..., None, :]  # (B, n, H, W)
        # Union of the first k blocks for k = 1..n, then keep the largest feasible k per image.
        prefix = blocks.cummax(dim=1).values  # (B, n, H, W)
        visible = (~prefix).flatten(2).sum(-1)  # (B, n)
        feasible = visible >= self.min_context  # (B, n); k=1 always feasible (validated)
        k = feasible.long().cumprod(dim=1).sum(dim=1) - 1  # (B,) index of the last feasible prefix
        target = prefix[torch.arange(batch_size), k]  # (B, H, W)
        return GridMasks(context=~target, target=target)


class RandomMasking(MaskGenerator):
    """Uniformly random cell masking: mask ``round(mask_ratio · H · W)`` cells per image.

    The target is every masked cell, the context every other cell.

    Args:
        mask_ratio: Fraction of cells hidden from the context encoder (0.6 keeps 20 of 49).
    """

    def __init__(self, mask_ratio: float = 0.6) -> None:
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.mask_ratio = mask_ratio

    def num_masked(self, height: int, width: int) -> int:
        return round(self.mask_ratio * height * width)

    def validate_grid(self, height: int, width: int) -> None:
        k = self.num_masked(height, width)
        if k < 1 or k >= height * width:
            raise ValueError(
                f"mask_ratio={self.mask_ratio} masks {k} of {height * width} cells on a "
                f"{height}x{width} grid; at least one cell must be masked and one visible. "
                "Use a finer grid (larger images) or another mask_ratio."
            )

    def __call__(
        self, batch_size: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> GridMasks:
        self.validate_grid(height, width)
        cells = height * width
        k = self.num_masked(height, width)
        rank = torch.rand(batch_size, cells, generator=generator).argsort(dim=1).argsort(dim=1)
        target = (rank < k).view(batch_size, height, width)  # (B, H, W)
        return GridMasks(context=~target, target=target)


class MixedMasking(MaskGenerator):
    """CNN-JEPA's "mixed" masking: per batch, multi-block with probability ``multi_block_prob``,
    otherwise random masking.

    Args:
        multi_block_prob: Probability that a batch uses multi-block masking.
        multi_block: The multi-block generator (paper defaults when omitted).
        random: The random generator (paper defaults when omitted).
    """

    def __init__(
        self,
        multi_block_prob: float = 0.75,
        multi_block: MultiBlockMasking | None = None,
        random: RandomMasking | None = None,
    ) -> None:
        if not 0 <= multi_block_prob <= 1:
            raise ValueError(f"multi_block_prob must be in [0, 1], got {multi_block_prob}")
        self.multi_block_prob = multi_block_prob
        self.multi_block = multi_block if multi_block is not None else MultiBlockMasking()
        self.random = random if random is not None else RandomMasking()

    def validate_grid(self, height: int, width: int) -> None:
        if self.multi_block_prob > 0:
            self.multi_block.validate_grid(height, width)
        if self.multi_block_prob < 1:
            self.random.validate_grid(height, width)

    def __call__(
        self, batch_size: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> GridMasks:
        use_blocks = bool(torch.rand(1, generator=generator) < self.multi_block_prob)
        gen = self.multi_block if use_blocks else self.random
        return gen(batch_size, height, width, generator)
