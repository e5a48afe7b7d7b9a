"""VICReg terms: hand-written reference formulas, lightly parity, and the global batch under DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightly.loss import VICRegLoss
from lightly.loss.vicreg_loss import covariance_loss, invariance_loss, variance_loss

from jepa_lightning.losses import VICRegTerms

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from vicreg_ddp_check import (  # noqa: E402
    BATCH,
    cnn_shared_step,
    make_cnn_inputs,
    make_cnn_model,
    make_inputs,
)


def _variance(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Hand-written: mean over dims of max(0, 1 - sqrt(unbiased variance + eps))."""
    n = z.shape[0]
    centred = z - z.sum(0) / n
    var = (centred**2).sum(0) / (n - 1)
    return torch.clamp(1 - torch.sqrt(var + eps), min=0).mean()


def _covariance(z: torch.Tensor) -> torch.Tensor:
    """Hand-written: squared off-diagonal entries of the unbiased covariance, summed, / D."""
    n, d = z.shape
    centred = z - z.mean(0)
    cov = torch.zeros(d, d)
    for i in range(d):
        for j in range(d):
            cov[i, j] = (centred[:, i] * centred[:, j]).sum() / (n - 1)
    off = cov - torch.diag(torch.diag(cov))
    return (off**2).sum() / d


def _invariance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum() / a.numel()


def test_terms_equal_hand_written_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 5, generator=g) * torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0])
    b = a + 0.2 * torch.randn(10, 5, generator=g)
    torch.testing.assert_close(invariance_loss(a, b), _invariance(a, b))
    torch.testing.assert_close(variance_loss(a), _variance(a))
    torch.testing.assert_close(covariance_loss(a), _covariance(a))
    out = VICRegTerms(sim_weight=25, std_weight=25, cov_weight=1, gather_distributed=False)(a, b)
    torch.testing.assert_close(out.invariance, _invariance(a, b))
    torch.testing.assert_close(out.variance, (_variance(a) + _variance(b)) / 2)
    torch.testing.assert_close(out.covariance, _covariance(a) + _covariance(b))
    expected = (
        25 * _invariance(a, b)
        + 25 * (_variance(a) + _variance(b)) / 2
        + (_covariance(a) + _covariance(b))
    )
    torch.testing.assert_close(out.loss, expected)
    # Two branches = VICReg exactly as lightly's VICRegLoss (and the VICReg reference code).
    torch.testing.assert_close(out.loss, VICRegLoss()(a, b))
    # A collapsed batch pays the full variance hinge (about 1 per dimension).
    collapsed = torch.ones(10, 5)
    assert VICRegTerms()(collapsed, collapsed).variance.item() == pytest.approx(1 - 0.01, 1e-4)


def test_one_and_three_branches_and_custom_weights() -> None:
    g = torch.Generator().manual_seed(1)
    zs = [torch.randn(6, 4, generator=g) for _ in range(3)]
    out = VICRegTerms(sim_weight=2, std_weight=3, cov_weight=5)(*zs)
    pairs = [(0, 1), (0, 2), (1, 2)]
    inv = sum(_invariance(zs[i], zs[j]) for i, j in pairs) / 3
    var = sum(_variance(z) for z in zs) / 3
    cov = sum(_covariance(z) for z in zs)
    torch.testing.assert_close(out.invariance, inv)
    torch.testing.assert_close(out.variance, var)
    torch.testing.assert_close(out.covariance, cov)
    torch.testing.assert_close(out.loss, 2 * inv + 3 * var + 5 * cov)
    one = VICRegTerms()(zs[0])
    assert one.invariance.item() == 0.0
    torch.testing.assert_close(one.loss, 25 * _variance(zs[0]) + _covariance(zs[0]))
    with pytest.raises(ValueError, match="2 samples"):
        VICRegTerms()(torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        VICRegTerms()(torch.randn(2, 3, 4))


def test_terms_are_float32_under_bf16_autocast() -> None:
    a, b = make_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.nn.functional.linear(a, torch.eye(a.shape[1]))  # bf16 under autocast
        assert x.dtype == torch.bfloat16
        out = VICRegTerms()(x, b)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, VICRegTerms()(x.float(), b).loss, rtol=1e-6, atol=1e-6)


def test_variance_and_covariance_use_the_global_batch_under_ddp(tmp_path: Path) -> None:
    world = 2
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "vicreg_ddp_check.py"), str(tmp_path), str(world)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    z_a, z_b = make_inputs()
    a, b = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
    ref = VICRegTerms(gather_distributed=False)(a, b)  # one process, the concatenated batch
    ref.loss.backward()
    for r in ranks:
        _, _, var, cov = r["terms"]
        torch.testing.assert_close(var, ref.variance)  # global batch, not the local shard
        torch.testing.assert_close(cov, ref.covariance)
        _, _, local_var, local_cov = r["local_terms"]
        assert not torch.allclose(local_var + local_cov, ref.variance + ref.covariance)
    # Invariance stays per shard; its mean over equal shards is the global one.
    torch.testing.assert_close((ranks[0]["terms"][1] + ranks[1]["terms"][1]) / 2, ref.invariance)
    # Gradients flow back through the all-gather: each rank's gradient is world x the
    # single-process gradient of its shard, which DDP's 1/world averaging turns into it exactly.
    half = BATCH // world
    for rank, r in enumerate(ranks):
        shard = slice(rank * half, (rank + 1) * half)
        assert r["grad_a"] is not None and r["grad_a"].abs().sum() > 0
        torch.testing.assert_close(r["grad_a"] / world, a.grad[shard])  # type: ignore[index]
        torch.testing.assert_close(r["grad_b"] / world, b.grad[shard])  # type: ignore[index]
    # CNN-JEPA's regulariser, the same terms inside shared_step on image shards: variance and
    # covariance are those of the whole batch, and the gradients DDP averages equal the
    # single-process gradients of the same loss on the concatenated batch.
    model = make_cnn_model()
    images, masks = make_cnn_inputs()
    single = cnn_shared_step(model, images, masks)
    single["loss"].backward()
    for r in ranks:
        torch.testing.assert_close(r["cnn"]["vic_variance"], single["vic_variance"])
        torch.testing.assert_close(r["cnn"]["vic_covariance"], single["vic_covariance"])
    # (the JEPA part is a per-image mean: equal shards average to the global value)
    jepa = sum(r["cnn"]["jepa_loss"] for r in ranks) / world
    torch.testing.assert_close(jepa, single["jepa_loss"])
    for name, p in model.context_encoder.named_parameters():
        averaged = sum(r["cnn_grads"][name] for r in ranks) / world  # what DDP applies
        torch.testing.assert_close(averaged, p.grad, rtol=1e-4, atol=1e-6, msg=name)
