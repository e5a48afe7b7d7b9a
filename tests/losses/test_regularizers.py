"""SIGReg and VISReg terms: a hand-written Epps–Pulley reference, parity with lightly's classes,
and random directions that are a pure function of (seed, step)."""

from __future__ import annotations

import math

import pytest
import torch
from lightly.loss.lejepa_loss import SIGReg
from lightly.loss.visreg_loss import VISRegLoss

from jepa_lightning.losses import Regularizer, SIGRegTerms, VICRegTerms, VISRegTerms


def _branches(n: int = 2, b: int = 16, d: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, d, generator=g) * torch.linspace(0.3, 2.0, d) + 0.5
    return torch.stack([z + 0.2 * torch.randn(b, d, generator=g) for _ in range(n)])  # (n, B, D)


def _epps_pulley(x: torch.Tensor, knots: int = 17, t_max: float = 3.0) -> float:
    """Hand-written, float64: N · ∫_{-t_max}^{t_max} |φ̂(t) − e^{−t²/2}|² e^{−t²/2} dt of the
    1-D sample ``x`` by the trapezoid rule on ``knots`` points of [0, t_max], doubled."""
    x = x.double()
    values = []
    for k in range(knots):
        t = t_max * k / (knots - 1)
        re, im = torch.cos(t * x).mean().item(), torch.sin(t * x).mean().item()
        gauss = math.exp(-t * t / 2)
        values.append(((re - gauss) ** 2 + im**2) * gauss)
    dt = t_max / (knots - 1)
    trapezoid = dt * (sum(values) - (values[0] + values[-1]) / 2)
    return x.numel() * 2 * trapezoid


def test_sigreg_equals_hand_written_epps_pulley_per_direction_and_branch() -> None:
    zs = _branches()
    reg = SIGRegTerms(num_vectors=5, sim_weight=0.7)
    out = reg(*zs, step=3)
    a = reg.directions(zs.shape[-1], step=3)  # (D, K) unit columns
    torch.testing.assert_close(a.norm(dim=0), torch.ones(5))
    expected = sum(_epps_pulley(z @ a[:, k]) for z in zs for k in range(5)) / (2 * 5)
    assert out.statistic.item() == pytest.approx(expected, rel=1e-4)
    centre = zs.mean(0)
    invariance = ((zs - centre) ** 2).mean()  # each branch to the branches' mean
    torch.testing.assert_close(out.invariance, invariance)
    torch.testing.assert_close(out.loss, out.statistic + 0.7 * invariance)
    # N · EP stays O(1) on a Gaussian sample and grows with N away from it (collapse).
    gauss = torch.randn(512, 6, generator=torch.Generator().manual_seed(1))
    assert 50 * reg(gauss, step=0).statistic < reg(0.05 * gauss, step=0).statistic


def test_sigreg_is_lightlys_with_the_draw_seeded() -> None:
    """Only where the directions come from differs: lightly draws them from the global RNG."""
    zs = _branches()
    reg = SIGRegTerms(num_vectors=64, knots=9, t_max=2.5)
    torch.manual_seed(reg.direction_seed(11))
    lightly = SIGReg(knots=9, t_max=2.5, num_vectors=64)(zs)
    torch.testing.assert_close(reg(*zs, step=11).statistic, lightly)


def test_visreg_is_lightlys_visreg_loss_with_the_draw_seeded() -> None:
    zs = _branches()
    reg = VISRegTerms(num_slices=64, sim_weight=1.0, seed=3)
    torch.manual_seed(reg.direction_seed(5))
    # Every branch a global view (the local views repeat them: the terms average over views).
    ref = VISRegLoss(lambda_param=0.5, num_slices=64).forward_components(
        local_proj=zs, global_proj=zs
    )
    out = reg(*zs, step=5)
    torch.testing.assert_close(out.scale, ref.scale)
    torch.testing.assert_close(out.shape, ref.shape)
    torch.testing.assert_close(out.center, ref.center)
    torch.testing.assert_close(out.invariance, ref.pred)
    torch.testing.assert_close(out.loss, 2 * ref.total)  # (1 − λ) · pred + λ · reg, λ = 0.5
    weighted = VISRegTerms(2.0, 3.0, 5.0, num_slices=64, seed=3)(*zs, step=5)
    expected = 2 * ref.scale + 3 * ref.shape + 5 * ref.center
    torch.testing.assert_close(weighted.loss, expected)


@pytest.mark.parametrize("cls", [SIGRegTerms, VISRegTerms])
def test_directions_are_a_function_of_seed_and_step_only(cls: type[Regularizer]) -> None:
    zs = _branches()
    reg = cls(seed=4)
    torch.manual_seed(0)
    first = reg(*zs, step=7).loss
    state = torch.get_rng_state()
    again = reg(*zs, step=7).loss
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    torch.manual_seed(123)
    reg(*zs, step=8)  # other draws in between
    fresh = cls(seed=4)(*zs, step=7).loss  # e.g. a model rebuilt to resume at step 7
    assert torch.equal(first, again) and torch.equal(first, fresh)
    assert not torch.equal(first, reg(*zs, step=8).loss)
    assert not torch.equal(first, cls(seed=5)(*zs, step=7).loss)


@pytest.mark.parametrize("reg", [SIGRegTerms(num_vectors=16), VISRegTerms(num_slices=16)])
def test_terms_are_float32_under_bf16_autocast(reg: Regularizer) -> None:
    zs = _branches()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.nn.functional.linear(zs[0], torch.eye(zs.shape[-1]))
        assert x.dtype == torch.bfloat16
        out = reg(x, zs[1], step=0)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, reg(x.float(), zs[1], step=0).loss)


def test_slot_properties_and_checks() -> None:
    assert all(issubclass(c, Regularizer) for c in (VICRegTerms, SIGRegTerms, VISRegTerms))
    assert VISRegTerms(0.0, 0.0, 0.0).is_zero and not SIGRegTerms().is_zero
    assert not SIGRegTerms().compares_views and VISRegTerms(sim_weight=1.0).compares_views
    sigreg = SIGRegTerms()
    assert sigreg.state_dict() == {} and len(list(sigreg.buffers())) == 3  # non-persistent
    assert sigreg.direction_seed(3) != SIGRegTerms(gather_distributed=False).direction_seed(4)
    for reg in (SIGRegTerms(), VISRegTerms()):
        with pytest.raises(ValueError, match="2 samples"):
            reg(torch.randn(1, 4))
        with pytest.raises(ValueError, match=r"\(B, D\)"):
            reg(torch.randn(2, 3, 4))
        assert reg(torch.randn(8, 4), step=0).invariance.item() == 0.0  # one branch
