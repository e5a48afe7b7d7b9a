"""The MinkowskiEngine backend computes what the masked-dense encoder computes.

MinkowskiEngine is an optional extra: without it these tests skip, unless
``JEPA_REQUIRE_MINKOWSKI=1`` (``.ci/run`` builds it and sets that), where they fail instead.
"""

from __future__ import annotations

import copy
import os
import sys

import pytest
import torch

from jepa_lightning import CNNJEPA
from jepa_lightning.modules import MaskedResNet
from jepa_lightning.modules.minkowski import conv_kernel, import_minkowski


def _require_minkowski() -> None:
    try:
        import_minkowski()
    except ImportError:
        if os.environ.get("JEPA_REQUIRE_MINKOWSKI") == "1":
            raise
        pytest.skip("MinkowskiEngine not installed (bash scripts/install_minkowski.sh)")


def test_missing_minkowski_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "MinkowskiEngine", None)  # import fails as if absent
    with pytest.raises(ImportError, match="scripts/install_minkowski") as err:
        MaskedResNet("resnet18", backend="minkowski")
    assert "masked_dense" in str(err.value)
    with pytest.raises(ImportError, match="MinkowskiEngine is not installed"):
        CNNJEPA(backbone="resnet18", small_images=True, image_size=32, sparse_backend="minkowski")


def test_kernel_layout_matches_a_torch_convolution_by_brute_force() -> None:
    """conv_kernel's index order: kernel[i_row + k * i_col] = weight[:, :, i_row, i_col].T."""
    w = torch.randn(5, 4, 3, 3)
    kernel = conv_kernel(w)  # (9, 4, 5)
    for i in range(3):
        for j in range(3):
            assert torch.equal(kernel[i + 3 * j], w[:, :, i, j].T)


CASES = [("resnet18", True, 32), ("resnet50", False, 64), ("resnet18", False, 96)]


@pytest.mark.parametrize(("arch", "small", "size"), CASES, ids=[f"{a}-{s}" for a, _, s in CASES])
def test_backends_agree_on_outputs_bn_statistics_and_gradients(
    arch: str, small: bool, size: int
) -> None:
    _require_minkowski()
    """In float64, so that the comparison is not limited by float32 conditioning: ResNet-50's
    last stage normalises over ~8 visible positions and amplifies float32 rounding to ~1e-2
    relative in the gradients of early layers (both backends alike); in float64 the two agree
    to ~1e-12, the precision of the arithmetic."""
    torch.manual_seed(0)
    dense = MaskedResNet(arch, small_images=small).train().double()
    sparse = MaskedResNet(arch, small_images=small, backend="minkowski").train().double()
    sparse.load_state_dict(dense.state_dict())
    g = torch.Generator().manual_seed(1)
    b, grid = 4, size // dense.stride
    x = torch.randn(b, 3, size, size, generator=g, dtype=torch.float64)
    mask = torch.rand(b, grid, grid, generator=g) < 0.5
    mask[:, 0, 0] = True  # at least one visible cell per image
    out_d = dense(x, mask)  # (B, C, h, w)
    out_s = sparse(x, mask)
    assert out_s.shape == out_d.shape
    assert torch.all(out_s[~mask[:, None].expand_as(out_s)] == 0)
    # a wrong kernel layout, stride, site set or BN statistic gives errors of order 1
    assert _rel_err(out_s, out_d) < 1e-9
    for (name, buf_d), (_, buf_s) in zip(
        dense.named_buffers(), sparse.named_buffers(), strict=True
    ):
        if buf_d.is_floating_point():
            assert _rel_err(buf_s, buf_d) < 1e-9, name
        else:
            assert torch.equal(buf_s, buf_d), name
    grad = torch.randn(out_d.shape, generator=g, dtype=torch.float64)
    (out_d * grad).sum().backward()
    (out_s * grad).sum().backward()
    for (name, p_d), (_, p_s) in zip(
        dense.named_parameters(), sparse.named_parameters(), strict=True
    ):
        assert p_d.grad is not None and p_s.grad is not None, name
        assert _rel_err(p_s.grad, p_d.grad) < 1e-9, name


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def test_cnn_jepa_step_is_the_same_with_either_backend() -> None:
    _require_minkowski()
    torch.manual_seed(0)
    dense = CNNJEPA(backbone="resnet18", small_images=True, image_size=32).train()
    sparse = CNNJEPA(
        backbone="resnet18", small_images=True, image_size=32, sparse_backend="minkowski"
    ).train()
    sparse.load_state_dict(dense.state_dict())  # checkpoints are interchangeable
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    losses = []
    for model in (dense, sparse):
        model.mask_generator.manual_seed(3)
        losses.append(model.shared_step(images)["loss"])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)  # float32
    target = copy.deepcopy(sparse.target_encoder)  # the dense EMA copy deep-copies cleanly
    assert torch.equal(target(images), dense.target_encoder(images))
