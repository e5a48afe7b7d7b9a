"""``last_stride=1``: the backbone's last stage keeps its resolution (8x8 grid at 32 px with the
small-image stem), the weights are unchanged, and the export loads into torchvision."""

from __future__ import annotations

import pytest
import torch

from jepa_lightning import CNNJEPA
from jepa_lightning.export import loading_recipe, torchvision_resnet
from jepa_lightning.modules import MaskedResNet
from jepa_lightning.modules.masked_resnet import export_torchvision_state_dict, masked_average_pool


@pytest.mark.parametrize(
    ("arch", "small", "size"), [("resnet18", True, 32), ("resnet50", False, 64)]
)
def test_last_stride_one_doubles_the_grid_with_the_same_weights(
    arch: str, small: bool, size: int
) -> None:
    torch.manual_seed(0)
    usual = MaskedResNet(arch, small_images=small).eval()
    fine = MaskedResNet(arch, small_images=small, last_stride=1).eval()
    fine.load_state_dict(usual.state_dict(), strict=True)  # same parameters, same keys
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        coarse_map, fine_map = usual(x), fine(x)
    assert (
        coarse_map.shape[-1] == size // usual.stride
        and fine_map.shape[-1] == 2 * coarse_map.shape[-1]
    )
    # Only layer4's first block changes: its strided conv and shortcut now have stride 1.
    changed = {
        name
        for name, m in fine.named_modules()
        if name  # the encoder itself: its total stride, checked above
        and getattr(m, "stride", None) != getattr(usual.get_submodule(name), "stride", None)
    }
    assert changed == {"layer4.0.conv1" if arch == "resnet18" else "layer4.0.conv2",
                       "layer4.0.downsample.0"}  # fmt: skip
    # The fine map is the dense version of the coarse one: stride-2 sampling of layer4's first
    # conv equals the stride-1 output at even positions, so the first block's conv agrees there.
    block_in = torch.randn(1, usual.layer4[0].conv1.in_channels, 8, 8)
    strided = usual.layer4[0].downsample[0](block_in)
    dense = fine.layer4[0].downsample[0](block_in)
    torch.testing.assert_close(strided, dense[..., ::2, ::2])


@pytest.mark.parametrize(
    ("arch", "small", "size"), [("resnet18", True, 32), ("resnet50", True, 32)]
)
def test_last_stride_one_exports_and_the_loading_recipe_runs(
    arch: str, small: bool, size: int, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    encoder = MaskedResNet(arch, small_images=small, last_stride=1).eval()
    state = export_torchvision_state_dict(encoder)
    out = tmp_path / "backbone.pt"
    torch.save(state, out)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = masked_average_pool(encoder(x))
        model = torchvision_resnet(arch, small_images=small, last_stride=1).eval()
        model.load_state_dict(state, strict=True)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    info = {"arch": arch, "small_images": small, "last_stride": 1, "output": str(out),
            "num_features": encoder.num_features}  # fmt: skip
    recipe = loading_recipe(info)
    assert "last_stride=1" in recipe
    scope = {"images": x}
    with torch.no_grad():
        exec(recipe, scope)  # the code the export prints for users
    torch.testing.assert_close(scope["features"], expected, rtol=1e-4, atol=1e-5)


def test_cnn_jepa_with_last_stride_one_trains_on_an_8x8_grid() -> None:
    torch.manual_seed(0)
    model = CNNJEPA(backbone="resnet18", small_images=True, image_size=32, last_stride=1)
    assert model.grid == 8 and model.target_encoder.stride == 4
    masks = model.sample_masks(4)
    assert masks.target.shape[-2:] == (8, 8)
    fwd = model.forward_masked(torch.randn(4, 3, 32, 32), masks)
    assert fwd.prediction.shape == fwd.target.shape == (4, 512, 8, 8)
    loss = model.shared_step(torch.randn(4, 3, 32, 32))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and next(model.predictor.parameters()).grad is not None


def test_bad_last_stride_is_refused() -> None:
    with pytest.raises(ValueError, match="last_stride must be 1 or 2"):
        MaskedResNet("resnet18", last_stride=3)
