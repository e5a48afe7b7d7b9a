"""I-JEPA multi-block masking on a ViT's patch grid, as token index tensors (I-JEPA, Assran et al.
2023, §3 and its reference code's ``MaskCollator``; ``docs/c_jepa.md``).

Per batch, one target-block shape (scale 0.15–0.2, aspect ratio 0.75–1.5) and one square
context-block shape (scale 0.85–1.0) are drawn, shared by every image as in the reference, so
every target block of the batch has the same number of patches. Per image, the positions of the
``num_blocks`` target blocks and of the context block are drawn independently; the context is
the context block minus the union of the targets (no overlap), truncated to the smallest count
in the batch so the index tensors stay rectangular.

Generation is vectorised over the batch and the blocks and draws only from the given
``torch.Generator``: a seeded generator reproduces the masks exactly. Indices are produced on
the generator's device (the CPU) and count patches in raster order from 0 (no class token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from jepa_lightning.masking.grid import _uniform


@dataclass(frozen=True)
class PatchMasks:
    """Token indices of one batch.

    Attributes:
        context: ``(B, Nc)`` long, sorted indices of the patches the context encoder sees.
        targets: ``(B, n_blocks, Nt)`` long, indices of each target block's patches (raster
            order); disjoint from ``context``. Blocks may overlap each other.
        grid: ``(H, W)`` of the patch grid.
    """

    context: Tensor
    targets: Tensor
    grid: tuple[int, int]

    def to(self, device: torch.device | str, non_blocking: bool = True) -> PatchMasks:
        return PatchMasks(
            self.context.to(device, non_blocking=non_blocking),
            self.targets.to(device, non_blocking=non_blocking),
            self.grid,
        )

    def _grid_mask(self, index: Tensor) -> Tensor:
        h, w = self.grid
        mask = torch.zeros(index.shape[0], h * w, dtype=torch.bool, device=index.device)
        mask.scatter_(1, index.flatten(1), True)
        return mask.view(-1, h, w)

    def context_grid(self) -> Tensor:
        """``(B, H, W)`` bool, ``True`` where the patch is visible to the context encoder."""
        return self._grid_mask(self.context)

    def target_grid(self) -> Tensor:
        """``(B, H, W)`` bool, the union of the target blocks."""
        return self._grid_mask(self.targets)


def block_shape_keep_area(scale: float, aspect: float, height: int, width: int) -> tuple[int, int]:
    """Block ``(h, w)`` in patches covering about ``scale · H · W`` patches with ``h / w ≈ aspect``.

    NOTE: ``w`` is rounded from ``area / h``, not from ``√(area / aspect)`` as the I-JEPA
    reference (and :func:`~jepa_lightning.masking.grid.block_shape_rounded_sides`) do, which
    keeps the area within half a row of the requested one on small grids (8×8 at 32 px).
    """
    area = scale * height * width
    h = max(1, min(height, round(math.sqrt(area * aspect))))
    w = max(1, min(width, round(area / h)))
    return h, w


class IJEPAMultiBlockMasking:
    """I-JEPA's multi-block masking (Assran et al., 2023) on a ``height × width`` patch grid.

    NOTE (deviations from the reference collator, each deliberate):

    * Block positions are drawn with an inclusive upper bound, so every patch — the last row and
      column included — can be a target (the reference's ``randint(0, H - h)`` never reaches them).
    * Scale and aspect ratio are drawn independently (the reference reuses one uniform draw for
      both, tying large blocks to tall ones).
    * When truncating the contexts to the batch minimum, a random subset of each image's context
      is kept (the reference keeps the first patches in raster order, biasing contexts upwards).
    * Instead of re-drawing positions in a Python loop until the context keeps ``min_keep``
      patches (and eventually letting it overlap the targets), an image whose context block minus
      the targets is too small takes the whole grid minus the targets as context: vectorised,
      and context and targets stay disjoint. :meth:`validate_grid` guarantees this is enough.

    Args:
        num_blocks: Number of target blocks per image (paper: 4).
        block_scale: Range of the fraction of the grid one target block covers (paper: 0.15–0.2).
        aspect_ratio: Range of target-block height / width, drawn uniformly (paper: 0.75–1.5).
        context_scale: Range of the fraction of the grid the square context block covers
            (paper: 0.85–1.0) before the targets are removed.
        min_keep: Minimum number of context patches per image (reference: 10 on 14×14 / 16×16
            grids). Capped at ``ceil(5 % of the grid)`` so small grids (8×8 at 32 px) work.
    """

    def __init__(
        self,
        num_blocks: int = 4,
        block_scale: tuple[float, float] = (0.15, 0.2),
        aspect_ratio: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        min_keep: int = 10,
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        for name, (lo, hi) in (("block_scale", block_scale), ("context_scale", context_scale)):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {(lo, hi)}")
        if not 0 < aspect_ratio[0] <= aspect_ratio[1]:
            raise ValueError(f"aspect_ratio must satisfy 0 < low <= high, got {aspect_ratio}")
        if min_keep < 1:
            raise ValueError(f"min_keep must be >= 1, got {min_keep}")
        self.num_blocks = num_blocks
        self.block_scale = tuple(block_scale)
        self.aspect_ratio = tuple(aspect_ratio)
        self.context_scale = tuple(context_scale)
        self.min_keep = min_keep

    def effective_min_keep(self, height: int, width: int) -> int:
        """``min_keep`` capped at 5 % of the grid (10 on 14×14, 4 on 8×8)."""
        return min(self.min_keep, math.ceil(0.05 * height * width))

    def validate_grid(self, height: int, width: int) -> None:
        """Raise ``ValueError`` if ``num_blocks`` of the largest target block could leave fewer
        than ``min_keep`` context patches on a ``height × width`` grid."""
        lo, hi = self.aspect_ratio
        aspects = [lo + (hi - lo) * i / 100 for i in range(101)]
        top = self.block_scale[1]
        largest = max(math.prod(block_shape_keep_area(top, a, height, width)) for a in aspects)
        keep = self.effective_min_keep(height, width)
        if height * width - self.num_blocks * largest < keep:
            raise ValueError(
                f"Mask settings cannot be satisfied on a {height}x{width} patch grid: "
                f"{self.num_blocks} target blocks of up to {largest} patches may cover all but "
                f"fewer than min_keep={keep} patches. Use a smaller patch_size (a finer grid), "
                "fewer blocks or a smaller block_scale."
            )

    def __call__(
        self, batch_size: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> PatchMasks:
        self.validate_grid(height, width)
        n, cells = self.num_blocks, height * width
        # One target-block shape and one context-block shape per batch, as the reference.
        scale, aspect, ctx_scale = (
            float(_uniform(*self.block_scale, generator)),
            float(_uniform(*self.aspect_ratio, generator)),
            float(_uniform(*self.context_scale, generator)),
        )
        bh, bw = block_shape_keep_area(scale, aspect, height, width)
        ch, cw = block_shape_keep_area(ctx_scale, 1.0, height, width)
        # Top-left corners, upper bound inclusive: (B, n + 1, 2), the last one the context's.
        u = torch.rand(batch_size, n + 1, 2, generator=generator)
        top = (u[..., 0] * (torch.tensor([height - bh] * n + [height - ch]) + 1)).long()
        left = (u[..., 1] * (torch.tensor([width - bw] * n + [width - cw]) + 1)).long()
        # Target indices: rows top..top+bh-1, cols left..left+bw-1 in raster order.
        rows = top[:, :n, None, None] + torch.arange(bh)[:, None]  # (B, n, bh, 1)
        cols = left[:, :n, None, None] + torch.arange(bw)  # (B, n, 1, bw)
        targets = (rows * width + cols).flatten(2)  # (B, n, Nt = bh*bw)
        covered = torch.zeros(batch_size, cells, dtype=torch.bool)
        covered.scatter_(1, targets.flatten(1), True)  # (B, N) union of the targets
        r = torch.arange(cells) // width
        c = torch.arange(cells) % width
        ctx_top, ctx_left = top[:, n, None], left[:, n, None]  # (B, 1)
        in_block = (r >= ctx_top) & (r < ctx_top + ch) & (c >= ctx_left) & (c < ctx_left + cw)
        context = in_block & ~covered  # (B, N)
        too_small = context.sum(1, keepdim=True) < self.effective_min_keep(height, width)
        context = torch.where(too_small, ~covered, context)  # whole grid minus the targets
        keep = int(context.sum(1).min())  # CPU tensors: no device sync
        # Keep a random subset of `keep` context patches per image, then sort them.
        score = torch.rand(batch_size, cells, generator=generator).masked_fill(~context, 2.0)
        ctx_idx = score.topk(keep, dim=1, largest=False).indices.sort(dim=1).values  # (B, Nc)
        return PatchMasks(context=ctx_idx, targets=targets, grid=(height, width))
