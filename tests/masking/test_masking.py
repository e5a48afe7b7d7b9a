"""Mask generators: the properties the CNN-JEPA paper promises, checked over many draws."""

from __future__ import annotations

import math

import pytest
import torch

from jepa_lightning.masking import MixedMasking, MultiBlockMasking, RandomMasking


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("grid", [(7, 7), (4, 4), (8, 8), (5, 9)])
def test_multiblock_disjoint_min_context_and_blocks_in_range(grid: tuple[int, int]) -> None:
    h, w = grid
    masking = MultiBlockMasking(min_context=2 if h * w < 30 else 5)
    g = _gen()
    for _ in range(50):
        m = masking(16, h, w, generator=g)
        assert m.context.shape == m.target.shape == (16, h, w)
        assert m.context.dtype == torch.bool
        assert not (m.context & m.target).any()  # disjoint
        assert (m.context | m.target).all()  # context = complement of targets
        assert (m.context.flatten(1).sum(1) >= masking.min_context).all()
        assert m.target.flatten(1).sum(1).min() >= 1


def test_multiblock_block_shape_in_configured_range() -> None:
    masking = MultiBlockMasking(num_blocks=1)
    g = _gen(1)
    h = w = 14
    aspects: list[float] = []
    for _ in range(200):
        t = masking(1, h, w, generator=g).target[0]
        rows = t.any(1).nonzero().flatten()
        cols = t.any(0).nonzero().flatten()
        bh, bw = len(rows), len(cols)
        # A single block is a full rectangle.
        assert t.sum() == bh * bw
        assert rows.max() - rows.min() + 1 == bh and cols.max() - cols.min() + 1 == bw
        # Rounding each side is monotonic, so the extremes of scale x aspect bound each side.
        n = h * w
        assert round(math.sqrt(0.15 * n * 0.75)) <= bh <= round(math.sqrt(0.2 * n * 1.5))
        assert round(math.sqrt(0.15 * n / 1.5)) <= bw <= round(math.sqrt(0.2 * n / 0.75))
        aspects.append(bh / bw)
    # Both tall and wide blocks occur.
    assert min(aspects) < 1 < max(aspects)


def test_multiblock_every_cell_reachable_including_last_row_and_column() -> None:
    masking = MultiBlockMasking()
    g = _gen(2)
    hits = torch.zeros(7, 7)
    for _ in range(100):
        hits += masking(64, 7, 7, generator=g).target.float().sum(0)
    assert (hits > 0).all(), f"never-targeted cells: {(hits == 0).nonzero().tolist()}"
    # Last row/column are targeted about as often as the first (the reference never hits them).
    assert hits[-1].sum() > 0.5 * hits[0].sum()
    assert hits[:, -1].sum() > 0.5 * hits[:, 0].sum()


def test_multiblock_block_count_and_fallback() -> None:
    # Four blocks of this size on a 4x4 grid often leave < min_context cells: the generator
    # must drop trailing blocks for those images (never return an infeasible mask).
    masking = MultiBlockMasking(num_blocks=4, block_scale=(0.3, 0.35), min_context=6)
    g = _gen(3)
    for _ in range(50):
        m = masking(32, 4, 4, generator=g)
        assert (m.context.flatten(1).sum(1) >= 6).all()


def test_unsatisfiable_mask_settings_raise_clear_error() -> None:
    masking = MultiBlockMasking(block_scale=(0.8, 0.9), min_context=5)
    with pytest.raises(ValueError, match="cannot be satisfied"):
        masking(2, 4, 4)
    with pytest.raises(ValueError, match="mask_ratio"):
        RandomMasking(0.99)(2, 2, 2)


def test_random_masking_ratio_exact() -> None:
    masking = RandomMasking(0.6)
    m = masking(128, 7, 7, generator=_gen())
    assert (m.target.flatten(1).sum(1) == 29).all()  # keep 20 of 49, as the paper
    assert (m.context.flatten(1).sum(1) == 20).all()
    assert not (m.context & m.target).any()
    # Positions are uniform: every cell masked with frequency ~0.6.
    freq = m.target.float().mean(0)
    assert freq.min() > 0.35 and freq.max() < 0.85


@pytest.mark.parametrize("factory", [MultiBlockMasking, RandomMasking, MixedMasking])
def test_same_seed_same_masks(factory: type) -> None:
    a = factory()(8, 7, 7, generator=_gen(5))
    b = factory()(8, 7, 7, generator=_gen(5))
    c = factory()(8, 7, 7, generator=_gen(6))
    assert torch.equal(a.context, b.context) and torch.equal(a.target, b.target)
    assert not torch.equal(a.target, c.target)


def test_mixed_uses_both_modes_at_configured_rate() -> None:
    masking = MixedMasking(multi_block_prob=0.75)
    g = _gen(7)
    n_random = 0
    trials = 400
    for _ in range(trials):
        m = masking(4, 7, 7, generator=g)
        # Random mode masks exactly 29 cells in every image; multi-block almost never does.
        n_random += int((m.target.flatten(1).sum(1) == 29).all())
    assert 0.17 < n_random / trials < 0.33


def test_block_shapes_uniform_aspect_and_reference_shared_shape() -> None:
    g = torch.Generator().manual_seed(0)
    fixed_scale = MultiBlockMasking(block_scale=(0.2, 0.2), min_context=1)
    ratios = torch.tensor(
        [h / w for _ in range(500) for h, w in fixed_scale.sample_shapes(1000, 1000, g)]
    )
    # Uniform on [0.75, 1.5] has mean 1.125; the log-uniform draw would give 1.082.
    assert abs(ratios.mean().item() - 1.125) < 0.01
    assert ratios.min() >= 0.745 and ratios.max() <= 1.505  # rounding to whole cells
    per_block = MultiBlockMasking(min_context=1)
    shared = MultiBlockMasking(min_context=1, shared_shape=True)
    differ = 0
    for _ in range(50):
        assert len(set(shared.sample_shapes(40, 40, g))) == 1  # one shape per batch
        differ += len(set(per_block.sample_shapes(40, 40, g))) > 1
    assert differ > 40
    # The reference's single draw: larger blocks are also taller (scale and aspect move together).
    areas, aspects = zip(
        *[(h * w, h / w) for _ in range(300) for h, w in shared.sample_shapes(200, 200, g)[:1]],
        strict=True,
    )
    corr = torch.corrcoef(torch.tensor([areas, aspects], dtype=torch.float))[0, 1]
    assert corr > 0.9
    masks = shared(8, 4, 4, g)
    assert masks.target.shape == (8, 4, 4) and not (masks.target & masks.context).any()
