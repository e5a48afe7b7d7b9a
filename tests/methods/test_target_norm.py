"""Target normalisation options of CNN-JEPA and the target-share decomposition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jepa_lightning import CNNJEPA
from jepa_lightning.callbacks import target_decomposition, target_shares
from jepa_lightning.losses import normalize_targets, normalized_smooth_l1
from jepa_lightning.masking import RandomMasking


def _brute_force_standardise(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Reference: standardise with numpy-style population statistics in float64."""
    t64 = t.double()
    mean = t64.mean(dim=dims, keepdim=True)
    var = ((t64 - mean) ** 2).mean(dim=dims, keepdim=True)
    return ((t64 - mean) / torch.sqrt(var + 1e-6)).float()


@pytest.mark.parametrize(
    ("kind", "dims"), [("layer", (1,)), ("batch", (0, 2, 3)), ("batch_position", (0,))]
)
def test_normalize_targets_matches_brute_force(kind: str, dims: tuple[int, ...]) -> None:
    t = torch.rand(6, 5, 3, 3) * 4 + 2  # positive, like ResNet outputs after ReLU
    torch.testing.assert_close(normalize_targets(t, kind), _brute_force_standardise(t, dims))


def test_layer_norm_option_equals_torch_layer_norm() -> None:
    t = torch.randn(4, 7, 2, 3)
    ref = F.layer_norm(t.permute(0, 2, 3, 1), (7,), eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(normalize_targets(t, "layer"), ref)


def test_batch_norms_remove_image_independent_parts() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(32, 16, 4, 4, generator=g)
    constant = torch.full((1, 16, 1, 1), 5.0)
    position = torch.randn(1, 16, 4, 4, generator=g) * 3
    # A constant added to every target is invisible after either batch standardisation...
    for kind in ("batch", "batch_position"):
        torch.testing.assert_close(
            normalize_targets(image + constant, kind), normalize_targets(image, kind)
        )
    # ... a position-only term only after the per-position one.
    torch.testing.assert_close(
        normalize_targets(image + position, "batch_position"),
        normalize_targets(image, "batch_position"),
    )
    assert not torch.allclose(
        normalize_targets(image + position, "batch"), normalize_targets(image, "batch")
    )
    assert torch.equal(normalize_targets(image, "none"), image)
    with pytest.raises(ValueError, match="Unknown target_norm"):
        normalize_targets(image, "group")  # type: ignore[arg-type]


def test_target_shares_of_known_maps() -> None:
    g = torch.Generator().manual_seed(0)
    # The same vector everywhere: all of it is the batch mean.
    same = torch.randn(1, 8, 1, 1, generator=g).expand(16, 8, 3, 3)
    assert target_decomposition(same)["batch_mean"] == pytest.approx(1.0, abs=1e-5)
    # Depends on position only: no image share.
    pos = torch.randn(1, 8, 3, 3, generator=g).expand(16, 8, 3, 3)
    shares = target_decomposition(pos)
    assert shares["image"] == pytest.approx(0.0, abs=1e-5)
    assert shares["batch_mean"] + shares["position"] == pytest.approx(1.0, abs=1e-5)
    # Zero-mean noise: nearly all image.
    noise = target_decomposition(torch.randn(4096, 8, 2, 2, generator=g))
    assert noise["image"] > 0.99
    # The three shares are the orthogonal split of the mean squared norm (brute force).
    maps = torch.rand(10, 6, 2, 3, generator=g)
    unit = F.normalize(maps, dim=1)
    mu_p = unit.mean(dim=0)
    shares = target_shares(mu_p)
    image = ((unit - mu_p) ** 2).sum(dim=1).mean()
    assert shares["image"] == pytest.approx(float(image), abs=1e-5)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6)


def test_cnn_jepa_standardises_the_target_and_nothing_else() -> None:
    torch.manual_seed(0)
    kw = {"backbone": "resnet18", "small_images": True, "image_size": 32}
    model = CNNJEPA(**kw, masking=RandomMasking(0.5), target_norm="batch")
    images = torch.randn(4, 3, 32, 32)
    model._mask_generator = torch.Generator().manual_seed(3)
    loss = model.shared_step(images)["loss"]
    model._mask_generator = torch.Generator().manual_seed(3)  # the same masks again
    masks = model.sample_masks(4)
    fwd = model.forward_masked(images, masks)
    target = normalize_targets(fwd.target, "batch")
    torch.testing.assert_close(loss, normalized_smooth_l1(fwd.prediction, target, masks.target))
    plain = normalized_smooth_l1(fwd.prediction, fwd.target, masks.target)
    assert not torch.allclose(loss, plain)
    with pytest.raises(ValueError, match="Unknown target_norm"):
        CNNJEPA(**kw, target_norm="nope")  # type: ignore[arg-type]


def test_zero_init_residual_zeroes_last_block_norms() -> None:
    model = CNNJEPA(backbone="resnet18", small_images=True, image_size=32, zero_init_residual=True)
    for layer in (model.context_encoder.layer1, model.context_encoder.layer4):
        for block in layer:
            assert torch.count_nonzero(block.bn2.weight) == 0
    default = CNNJEPA(backbone="resnet18", small_images=True, image_size=32)
    assert torch.count_nonzero(default.context_encoder.layer1[0].bn2.weight) > 0


def test_predictor_linear_output_can_match_standardised_targets() -> None:
    from jepa_lightning.modules import ConvPredictor

    torch.manual_seed(0)
    paper, linear = ConvPredictor(16, depth=2), ConvPredictor(16, depth=2, linear_output=True)
    ctx, visible = torch.randn(4, 16, 3, 3), torch.ones(4, 3, 3, dtype=torch.bool)
    assert (paper(ctx, visible) >= 0).all()  # BN + ReLU at the end: never negative
    out = linear(ctx, visible)
    assert (out < 0).any()
    last = list(linear.layers)[-1]
    assert isinstance(last, torch.nn.Conv2d) and last.bias is not None
    # Only the last layer differs: its BN is replaced by the 1×1 conv's bias.
    n_paper = sum(p.numel() for p in paper.parameters())
    assert sum(p.numel() for p in linear.parameters()) == n_paper - 2 * 16 + 16
    model = CNNJEPA(
        backbone="resnet18", small_images=True, image_size=32, predictor_linear_output=True
    )
    assert isinstance(list(model.predictor.layers)[-1], torch.nn.Conv2d)


def test_target_maps_pool_to_the_evaluation_embedding() -> None:
    from jepa_lightning import CJEPA

    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    cnn = CNNJEPA(backbone="resnet18", small_images=True, image_size=32).eval()
    vit = CJEPA(arch="vit_tiny", patch_size=4, image_size=32, depth=2).eval()
    for model, grid in ((cnn, (4, 4)), (vit, (8, 8))):
        with torch.no_grad():
            maps = model.target_map(images)
        assert maps.shape[0] == 2 and tuple(maps.shape[2:]) == grid
        torch.testing.assert_close(maps.float().mean(dim=(2, 3)), model.embed(images))
