"""I-JEPA multi-block masks on the patch grid: disjointness, shapes, coverage, seeding."""

from __future__ import annotations

import math

import pytest
import torch

from jepa_lightning.masking import IJEPAMultiBlockMasking, PatchMasks
from jepa_lightning.masking.ijepa import block_shape_keep_area


def _draw(grid: int, batch: int = 16, seed: int = 0, **kw: object) -> PatchMasks:
    gen = torch.Generator().manual_seed(seed)
    return IJEPAMultiBlockMasking(**kw)(batch, grid, grid, generator=gen)  # type: ignore[arg-type]


def _shapes(lo: float, hi: float, alo: float, ahi: float, grid: int) -> set[tuple[int, int]]:
    """Every block shape reachable with scale in [lo, hi] and aspect in [alo, ahi]."""
    return {
        block_shape_keep_area(lo + (hi - lo) * i / 200, alo + (ahi - alo) * j / 200, grid, grid)
        for i in range(201)
        for j in range(201)
    }


@pytest.mark.parametrize("grid", [14, 8])
def test_context_and_targets_are_disjoint_and_well_formed(grid: int) -> None:
    masking = IJEPAMultiBlockMasking()
    for seed in range(20):
        m = _draw(grid, seed=seed)
        b, n, _ = m.targets.shape
        assert (b, n) == (16, 4) and m.context.shape[0] == 16
        ctx = m.context_grid().flatten(1)  # (B, N)
        for k in range(n):  # no target patch of any block is in the context
            assert not ctx.gather(1, m.targets[:, k]).any()
        # Context indices: sorted, unique, in range, at least min_keep of them.
        assert (m.context.diff(dim=1) > 0).all()
        assert int(m.context.min()) >= 0 and int(m.context.max()) < grid * grid
        assert m.context.shape[1] >= masking.effective_min_keep(grid, grid)
        assert ctx.sum(1).eq(m.context.shape[1]).all()  # equal counts across the batch


def test_target_blocks_are_rectangles_of_the_paper_scale_and_aspect() -> None:
    grid, cells = 14, 196
    allowed = _shapes(0.15, 0.2, 0.75, 1.5, grid)
    seen = set()
    for seed in range(40):
        m = _draw(grid, batch=4, seed=seed)
        nt = m.targets.shape[2]
        for blocks in m.targets:
            for idx in blocks:
                rows, cols = idx // grid, idx % grid
                h = int(rows.max() - rows.min()) + 1
                w = int(cols.max() - cols.min()) + 1
                assert h * w == nt == idx.unique().numel()  # a full h x w rectangle
                assert (h, w) in allowed
                assert 0.15 * cells - h / 2 <= h * w <= 0.2 * cells + h / 2
                seen.add((h, w))
    # Both tall and wide blocks occur (aspect ratio drawn over 0.75-1.5).
    assert any(h > w for h, w in seen) and any(h < w for h, w in seen)
    # Rounding keeps h within half a patch of sqrt(area * aspect) and the area within h / 2.
    for s in (0.15, 0.17, 0.2):
        for a in (0.75, 1.0, 1.5):
            h, w = block_shape_keep_area(s, a, grid, grid)
            assert abs(h - math.sqrt(s * cells * a)) <= 0.5
            assert abs(h * w - s * cells) <= h / 2


def test_context_block_scale_before_removing_targets() -> None:
    # One tiny target: the context is a square-ish block of scale 0.85-1.0 minus <= 2 patches.
    allowed = _shapes(0.85, 1.0, 1.0, 1.0, 14)
    for seed in range(30):
        m = _draw(14, batch=1, seed=seed, num_blocks=1, block_scale=(0.01, 0.01))
        idx = m.context[0]
        rows, cols = idx // 14, idx % 14
        h = int(rows.max() - rows.min()) + 1
        w = int(cols.max() - cols.min()) + 1
        assert (h, w) in allowed
        assert h * w - m.targets.shape[2] <= idx.numel() <= h * w


def test_every_patch_can_be_a_target_including_last_row_and_column() -> None:
    for grid in (14, 8):
        seen = torch.zeros(grid, grid, dtype=torch.bool)
        for seed in range(60):
            seen |= _draw(grid, seed=seed).target_grid().any(0)
        assert seen.all(), f"never a target on the {grid}x{grid} grid:\n{(~seen).int()}"


def test_same_seed_same_masks_different_seed_different_masks() -> None:
    a, b, c = _draw(14, seed=3), _draw(14, seed=3), _draw(14, seed=4)
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not (a.context.shape == c.context.shape and torch.equal(a.context, c.context))


def test_min_keep_is_guaranteed_even_with_a_small_context_block() -> None:
    # A context block of 30 % leaves too few patches once 4 targets are removed: those images
    # fall back to the whole grid minus the targets, still disjoint from them.
    masking = IJEPAMultiBlockMasking(context_scale=(0.3, 0.3), min_keep=10)
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        m = masking(32, 8, 8, generator=gen)
        assert m.context.shape[1] >= masking.effective_min_keep(8, 8) == 4
        ctx = m.context_grid().flatten(1)
        assert not ctx.gather(1, m.targets.flatten(1)).any()


def test_grids_too_small_for_the_settings_raise() -> None:
    with pytest.raises(ValueError, match="4x4 patch grid"):
        IJEPAMultiBlockMasking()(2, 4, 4)
    IJEPAMultiBlockMasking(num_blocks=1)(2, 4, 4)  # one block fits
    with pytest.raises(ValueError, match="block_scale"):
        IJEPAMultiBlockMasking(block_scale=(0.2, 0.1))


def test_masks_move_to_a_device_and_back_to_grids() -> None:
    m = _draw(8).to("cpu")
    assert m.context_grid().shape == (16, 8, 8) and m.target_grid().dtype == torch.bool
    assert m.grid == (8, 8)
