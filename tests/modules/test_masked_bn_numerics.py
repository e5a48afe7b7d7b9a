"""Masked BatchNorm keeps float32 precision on features with a large mean (``|μ| ≫ σ``).

Eager, compiled (``torch.compile``, inductor) and bf16-autocast (CPU) outputs and gradients are
compared with a float64 reference on the same (rounded) inputs: plain autograd through the masked
BatchNorm formulas, independent of the hand-written backward. Post-activation features of a
deep ResNet can have a mean of many stds in some channels. The one-pass statistics and backward
this replaced (``E[x²] − μ²``, ``Σ dy·x − μ·Σ dy``) fail every case here: ~3e-4 off at
``|μ| = 100 σ`` and ~4e-2 at ``1000 σ`` in float32, eager and compiled alike; with the centred
forward and the old backward, the weight gradient is still 8.5e-6 (100 σ) and 1e-4 (1000 σ) off.

Tolerances (relative error of the whole tensor, ``‖got − ref‖ / ‖ref‖``), per dtype:

* float32 (eager and compiled), every output and gradient: 1e-6 — float32 rounding is 6e-8 and
  the sums run over a few hundred positions (measured: 5e-8 to 1.4e-7).
* bf16 autocast: the output and the input gradient are bf16 tensors, so 8e-3 (one bf16
  rounding is up to 3.9e-3 of a value; measured 1.5e-3 to 1.8e-3); the weight and bias
  gradients are float32 parameters computed in float32: 1e-6, as above (measured ≤ 1.1e-7).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from jepa_lightning.modules import MaskedBatchNorm2d

EPS = 1e-5
F32 = 1e-6
BF16 = 8e-3


def _inputs(mean_over_std: float, seed: int = 0) -> dict[str, Tensor]:
    """(8, 16, 8, 8) features with per-channel std in [0.5, 1.5] and mean ±``mean_over_std``
    stds, ~60 % of the positions visible, an upstream gradient, and BN parameters."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = 8, 16, 8, 8
    std = 0.5 + torch.rand(c, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(c, generator=g) > 0.5, 1.0, -1.0).double()
    mean = mean_over_std * std * sign
    noise = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    return {
        "x": mean[:, None, None] + std[:, None, None] * noise,
        "mask": (torch.rand(b, 1, h, w, generator=g) > 0.4).double(),
        "dy": torch.randn(b, c, h, w, generator=g, dtype=torch.float64),
        "weight": 1 + 0.1 * torch.randn(c, generator=g, dtype=torch.float64),
        "bias": 0.1 * torch.randn(c, generator=g, dtype=torch.float64),
    }


def _reference(x: Tensor, mask: Tensor, dy: Tensor, weight: Tensor, bias: Tensor) -> list[Tensor]:
    """Output and gradients (x, weight, bias) in float64 by autograd through the definition:
    mean and biased variance over visible positions, 0 at masked positions."""
    x, weight, bias = (t.double().detach().requires_grad_() for t in (x, weight, bias))
    mask = mask.double()
    n = mask.sum()
    mean = (x * mask).sum(dim=(0, 2, 3)) / n
    centred = (x - mean[:, None, None]) * mask
    var = centred.square().sum(dim=(0, 2, 3)) / n
    out = centred * torch.rsqrt(var + EPS)[:, None, None] * weight[:, None, None]
    out = (out + bias[:, None, None]) * mask
    out.backward(dy.double())
    return [out.detach(), x.grad, weight.grad, bias.grad]  # type: ignore[list-item]


def _layer(weight: Tensor, bias: Tensor) -> MaskedBatchNorm2d:
    layer = MaskedBatchNorm2d(weight.numel(), eps=EPS)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer.train()


def _run(layer: Any, x: Tensor, mask: Tensor, dy: Tensor, autocast: bool) -> list[Tensor]:
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = layer(x, mask)
    out.backward(dy)
    return [out.detach(), x.grad, layer.weight.grad, layer.bias.grad]


def _errors(got: list[Tensor], ref: list[Tensor]) -> dict[str, float]:
    names = ("out", "grad_x", "grad_weight", "grad_bias")
    pairs = zip(names, got, ref, strict=True)
    return {n: float((g.double() - r).norm() / r.norm()) for n, g, r in pairs}


@pytest.fixture(scope="module")
def compiled_layer() -> Any:
    """One compiled layer for every case (same shapes: compiled once, ~20 s on 2 cores)."""
    torch._dynamo.reset()
    layer = _layer(torch.ones(16), torch.zeros(16))
    return layer, torch.compile(layer, fullgraph=True)


@pytest.mark.parametrize("mean_over_std", [100.0, 1000.0, -300.0])
@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.usefixtures("one_thread")
def test_float32_outputs_and_gradients_match_float64(
    mode: str, mean_over_std: float, compiled_layer: Any
) -> None:
    case = _inputs(mean_over_std)
    x, mask, dy = case["x"].float(), case["mask"].float(), case["dy"].float()
    weight, bias = case["weight"].float(), case["bias"].float()
    ref = _reference(x, mask, dy, weight, bias)  # float64 on the float32-rounded inputs
    if mode == "eager":
        layer: Any = _layer(weight, bias)
        module = layer
    else:
        module, layer = compiled_layer
        with torch.no_grad():  # in place: the compiled graph holds these tensors
            module.weight.copy_(weight)
            module.bias.copy_(bias)
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
        module.weight.grad = module.bias.grad = None
    got = _run(layer, x, mask, dy, autocast=False)
    errors = _errors(got, ref)
    assert all(e < F32 for e in errors.values()), errors
    assert (got[0][mask.expand_as(x) == 0] == 0).all()  # masked positions stay exactly 0
    # Running statistics get the accurate visible-position mean and unbiased variance.
    n = mask.sum()
    mean = (x.double() * mask).sum(dim=(0, 2, 3)) / n
    var = (((x.double() - mean[:, None, None]) * mask).square().sum(dim=(0, 2, 3))) / (n - 1)
    torch.testing.assert_close(module.running_mean.double(), 0.1 * mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(module.running_var.double(), 0.9 + 0.1 * var, rtol=1e-6, atol=0)


@pytest.mark.parametrize("mean_over_std", [100.0, 1000.0])
def test_bf16_autocast_outputs_and_gradients_match_float64(mean_over_std: float) -> None:
    case = _inputs(mean_over_std)
    # What autocast hands the layer: bf16 features (a conv's output) and a bf16 gradient.
    x, dy = case["x"].bfloat16(), case["dy"].bfloat16()
    mask, weight, bias = case["mask"].float(), case["weight"].float(), case["bias"].float()
    ref = _reference(x, mask, dy, weight, bias)  # on the bf16-rounded inputs
    layer = _layer(weight, bias)
    got = _run(layer, x, mask, dy, autocast=True)
    assert got[0].dtype == got[1].dtype == torch.bfloat16
    errors = _errors(got, ref)
    assert errors["out"] < BF16 and errors["grad_x"] < BF16, errors
    assert errors["grad_weight"] < F32 and errors["grad_bias"] < F32, errors
