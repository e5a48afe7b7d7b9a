"""Colour augmentation and CNN-JEPA's ``context_view="other"``: the context encoder sees a
recoloured copy of the target's crop (``SSLDataModule(num_views=2, shared_crop=True)``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from jepa_lightning import CNNJEPA, DigitsDataModule
from jepa_lightning.cli import main
from jepa_lightning.data import SharedCropViews, ssl_transform
from jepa_lightning.losses import VICRegTerms, normalized_smooth_l1

B, SIZE = 4, 32
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]


def _photo() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=g)


def test_shared_crop_views_share_the_crop_and_differ_only_in_colour() -> None:
    image = _photo()
    kw = {"image_size": 16, "num_views": 3, "mean": MEAN, "std": STD}
    torch.manual_seed(5)
    plain = SharedCropViews(**kw)(image)
    torch.manual_seed(5)
    gray = SharedCropViews(grayscale=1.0, **kw)(image)
    torch.manual_seed(5)
    jittered = SharedCropViews(color_jitter=1.0, **kw)(image)
    # Without colour options every view is the same crop; the first view never changes colour.
    assert all(torch.equal(plain[0], v) for v in plain[1:])
    assert torch.equal(gray[0], plain[0]) and torch.equal(jittered[0], plain[0])
    # The grayscale views are the luminance of that very crop (same pixels, same geometry).
    crop = _unnormalise(plain[0])  # (3, S, S) in [0, 1]
    luma = (0.299 * crop[0] + 0.587 * crop[1] + 0.114 * crop[2]).expand(3, -1, -1)
    for view in gray[1:]:
        torch.testing.assert_close(_unnormalise(view), luma, atol=1.5 / 255, rtol=0)
    # Jitter draws its own colours per view (p = 0.8 each: at least one of two differs here).
    assert not torch.equal(jittered[1], plain[0]) or not torch.equal(jittered[2], plain[0])
    assert not torch.equal(jittered[1], jittered[2])


def test_colour_options_default_off_and_match_torchvision() -> None:
    image = _photo()
    torch.manual_seed(3)
    ours = ssl_transform(16, mean=MEAN, std=STD)(image)
    torch.manual_seed(3)
    reference = v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(16, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC,
                             antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(MEAN), list(STD)),
    ])(image)  # fmt: skip
    assert torch.equal(ours, reference)  # the paper's augmentation: crop, flip, normalise
    torch.manual_seed(3)
    gray = ssl_transform(16, mean=MEAN, std=STD, grayscale=1.0)(image)
    assert torch.allclose(_unnormalise(gray)[0], _unnormalise(gray)[2], atol=1e-6)


def _model(**kwargs) -> CNNJEPA:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return CNNJEPA(backbone="resnet18", small_images=True, image_size=SIZE, **kwargs).train()


def test_context_view_other_targets_view_one_from_context_on_view_two() -> None:
    g = torch.Generator().manual_seed(1)
    target_view, context_view = torch.randn(2, B, 3, SIZE, SIZE, generator=g)
    model = _model(context_view="other")
    batch, _ = model.split_batch([[target_view, context_view], torch.arange(B)])
    assert batch.shape == (B, 2, 3, SIZE, SIZE)
    model.mask_generator.manual_seed(7)
    out = model.shared_step(batch)
    out["loss"].backward()
    # Brute force with the same masks: target encoder on view 1, context + predictor on view 2.
    model.mask_generator.manual_seed(7)
    masks = model.sample_masks(B)
    with torch.no_grad():
        target = model.target_encoder(target_view)
        context = model.context_encoder(context_view, masks.context)
        prediction = model.predictor(context, masks.context)
        expected = normalized_smooth_l1(prediction, target, masks.target)
        torch.testing.assert_close(out["loss"].detach(), expected)
        assert not torch.allclose(  # the views are not interchangeable
            expected, normalized_smooth_l1(prediction, model.target_encoder(context_view),
                                           masks.target))  # fmt: skip
    grads = [n for n, p in model.named_parameters() if p.grad is not None]
    assert any(n.startswith("context_encoder.") for n in grads)
    assert not any(n.startswith("target_encoder.") for n in grads)


def test_context_view_other_needs_two_views_and_no_invariance_term() -> None:
    x = torch.randn(B, 3, SIZE, SIZE)
    model = _model(context_view="other")
    with pytest.raises(ValueError, match="shared_crop: true"):
        model.shared_step(x)  # training on one view would silently be context_view="same"
    model.eval()
    assert torch.isfinite(model.shared_step(x)["loss"])  # evaluation loaders give one view
    with pytest.raises(ValueError, match="sim_weight"):
        _model(context_view="other", vicreg=VICRegTerms())
    with pytest.raises(ValueError, match="num_views: 2"):
        DigitsDataModule(image_size=SIZE, shared_crop=True)
    with pytest.raises(ValueError, match="color_jitter"):
        DigitsDataModule(image_size=SIZE, color_jitter=-1.0)


def test_context_view_other_trains_through_the_cli(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[2] / "configs/quickstart.yaml"
    cli = main([
        "fit", "--config", str(config), "--trainer.fast_dev_run", "2",
        "--data.init_args.batch_size", "8", "--trainer.logger", "false",
        "--trainer.callbacks", "[]", "--trainer.default_root_dir", str(tmp_path),
        "--model.init_args.context_view", "other", "--data.init_args.num_views", "2",
        "--data.init_args.shared_crop", "true", "--data.init_args.color_jitter", "0.5",
        "--data.init_args.grayscale", "0.2",
    ])  # fmt: skip
    assert cli.model.num_views == 2 and cli.datamodule.shared_crop
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
