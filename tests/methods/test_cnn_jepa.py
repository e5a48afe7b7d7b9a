"""CNN-JEPA maths: predictor, loss, gradients, and the module's step."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jepa_lightning import CNNJEPA
from jepa_lightning.losses import normalized_smooth_l1
from jepa_lightning.masking import GridMasks, RandomMasking
from jepa_lightning.modules import ConvPredictor


def test_loss_equals_hand_computed_value() -> None:
    # Two cells, 2 channels; only cell (0, 0, 0) is a target.
    pred = torch.tensor([[[[3.0, 1.0]], [[4.0, 1.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 5.0]], [[0.0, 5.0]]]])
    cells = torch.tensor([[[True, False]]])
    # Cell 0: p = (0.6, 0.8), t = (1, 0); diffs 0.4, 0.8 -> 0.5*(0.16 + 0.64) = 0.4.
    loss = normalized_smooth_l1(pred, target, cells)
    assert loss.item() == pytest.approx(0.4, abs=1e-6)
    # Equals 1 - cosine for unit vectors, averaged over target cells only.
    cells_all = torch.ones(1, 1, 2, dtype=torch.bool)
    cos = F.cosine_similarity(pred, target, dim=1)
    assert normalized_smooth_l1(pred, target, cells_all).item() == pytest.approx(
        (1 - cos).mean().item(), abs=1e-6
    )


def test_predictor_mask_token_and_paper_parameter_count() -> None:
    pred = ConvPredictor(2048, depth=3, kernel_size=3)
    n = sum(p.numel() for p in pred.parameters())
    assert 12.6e6 < n < 12.8e6  # the paper's ≈ 12.7 M for ResNet-50
    small = ConvPredictor(8, depth=2)
    ctx = torch.randn(2, 8, 3, 3)
    visible = torch.zeros(2, 3, 3, dtype=torch.bool)
    visible[:, 1, 1] = True
    # Changing context values at masked cells has no effect: they are replaced by the token.
    other = ctx.clone()
    other[:, :, 0, 0] += 100
    small.eval()
    torch.testing.assert_close(small(ctx, visible), small(other, visible))


def _tiny_module(**kwargs: object) -> CNNJEPA:
    kw: dict = {"backbone": "resnet18", "small_images": True, "image_size": 32}
    kw.update(kwargs)
    return CNNJEPA(**kw)


def test_gradients_reach_every_trainable_parameter_and_never_the_target(
    check_gradients: Callable[[nn.Module], None],
) -> None:
    torch.manual_seed(0)
    model = _tiny_module(masking=RandomMasking(0.5))
    out = model.shared_step(torch.randn(4, 3, 32, 32))
    out["loss"].backward()
    check_gradients(model)
    assert out["embedding"].shape == (4, 512) and not out["embedding"].requires_grad


def test_loss_only_uses_target_cells() -> None:
    torch.manual_seed(1)
    model = _tiny_module()
    images = torch.randn(2, 3, 32, 32)
    ctx = torch.ones(2, 4, 4, dtype=torch.bool)
    ctx[:, 2:, 2:] = False
    target = ~ctx
    pred, tgt, _ = model.forward_masked(images, GridMasks(ctx, target))
    loss = normalized_smooth_l1(pred, tgt, target)
    per_cell = 1 - F.cosine_similarity(pred, tgt, dim=1)  # (B, h, w)
    torch.testing.assert_close(loss, per_cell[target].mean(), rtol=1e-5, atol=1e-6)


def test_image_size_not_fitting_the_grid_raises() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        CNNJEPA(backbone="resnet18", image_size=40)
    with pytest.raises(ValueError, match="small_images=True"):
        CNNJEPA(backbone="resnet18", image_size=32)


def test_masks_follow_seed_and_differ_between_steps() -> None:
    a, b = _tiny_module(mask_seed=3), _tiny_module(mask_seed=3)
    m1, m2 = a.sample_masks(8), b.sample_masks(8)
    assert torch.equal(m1.target, m2.target)
    assert not torch.equal(a.sample_masks(8).target, m1.target)


def test_subclasses_cannot_override_shared_step() -> None:
    with pytest.raises(TypeError, match="overrides shared_step"):

        class Unsafe(CNNJEPA):  # would skip the view checks and channels-last conversion
            def shared_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
                return {}


def test_embed_is_features_without_gradients_and_use_encoder_keeps_both_encoders() -> None:
    from jepa_lightning.evaluation import use_encoder

    model = _tiny_module()
    images = torch.randn(2, 3, 32, 32)
    use_encoder(model, "context")
    assert model.feature_encoder is model.context_encoder
    assert model.target_encoder is not model.context_encoder  # nothing aliased
    features = model.features(images)
    assert features.requires_grad and not model.embed(images).requires_grad
    torch.testing.assert_close(model.embed(images), features.detach())
