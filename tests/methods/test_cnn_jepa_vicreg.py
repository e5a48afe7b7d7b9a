"""CNN-JEPA with C-JEPA's VICReg regulariser (``CNNJEPA(vicreg=VICRegTerms(...))``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightly.loss import VICRegLoss

from jepa_lightning import CNNJEPA
from jepa_lightning.cli import main
from jepa_lightning.losses import VICRegTerms, normalized_smooth_l1

B, SIZE = 6, 32


def _model(**kwargs) -> CNNJEPA:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return CNNJEPA(backbone="resnet18", small_images=True, image_size=SIZE, **kwargs).train()


def _images(views: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    shape = (B, views, 3, SIZE, SIZE) if views > 1 else (B, 3, SIZE, SIZE)
    return torch.randn(*shape, generator=g)


def _step(model: CNNJEPA, images: torch.Tensor) -> tuple[dict, dict[str, torch.Tensor]]:
    model.mask_generator.manual_seed(7)  # the same masks for every model
    model.zero_grad(set_to_none=True)
    out = model.shared_step(images)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _visible_mean(features: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Brute force: per image, the mean of the feature vectors at its visible cells."""
    rows = [f[:, m].mean(dim=1) for f, m in zip(features, visible, strict=True)]  # (C,) each
    return torch.stack(rows)  # (B, C)


@pytest.mark.parametrize(
    "off", [VICRegTerms(0.0, 0.0, 0.0), "weight0"], ids=["all-terms-0", "vicreg_weight-0"]
)
def test_regulariser_off_equals_plain_cnn_jepa_exactly(off: object) -> None:
    plain = _model()
    reg = (
        _model(vicreg=VICRegTerms(), vicreg_weight=0.0) if off == "weight0" else _model(vicreg=off)
    )
    reg.load_state_dict(plain.state_dict())
    images = _images(views=2)[:, 0]  # one view
    out_p, grads_p = _step(plain, images)
    out_r, grads_r = _step(reg, images)
    assert not reg.uses_vicreg and reg.num_views == 1
    assert torch.equal(out_p["loss"], out_r["loss"])
    assert grads_p.keys() == grads_r.keys() and len(grads_p) > 0
    for name, g in grads_p.items():
        assert torch.equal(g, grads_r[name]), name


def test_variance_covariance_term_equals_reference_on_the_pooled_context() -> None:
    """One view: the extra loss is vicreg_weight x (25 var + 1 cov) of the context encoder's
    output averaged over each image's visible cells, recomputed here by brute force."""
    weight = 0.01
    model = _model(vicreg=VICRegTerms(sim_weight=0.0), vicreg_weight=weight)
    images = _images()
    out, _ = _step(model, images)
    model.mask_generator.manual_seed(7)
    masks = model.sample_masks(B)
    context = model.context_encoder(images, masks.context).detach()  # (B, C, h, w)
    z = _visible_mean(context, masks.context)  # (B, C)
    std = torch.sqrt(z.var(dim=0) + 1e-4)
    variance = torch.relu(1 - std).mean()
    cov = torch.cov(z.T)  # (C, C), unbiased
    covariance = (cov**2).sum().sub((cov.diagonal() ** 2).sum()) / z.shape[1]
    torch.testing.assert_close(out["vic_variance"], variance)
    torch.testing.assert_close(out["vic_covariance"], covariance, rtol=1e-4, atol=1e-6)
    assert out["vic_invariance"] == 0
    torch.testing.assert_close(
        out["loss"] - out["jepa_loss"], weight * (25 * variance + covariance)
    )


def test_two_view_term_equals_lightly_vicreg_and_each_view_has_its_jepa_loss() -> None:
    weight = 0.001
    model = _model(vicreg=VICRegTerms(25.0, 25.0, 1.0), vicreg_weight=weight)
    assert model.num_views == 2
    images = _images(views=2)  # (B, 2, 3, H, W)
    out, grads = _step(model, images)
    batch = torch.cat([images[:, 0], images[:, 1]])  # (2B, 3, H, W): views one after the other
    model.mask_generator.manual_seed(7)
    masks = model.sample_masks(2 * B)
    with torch.no_grad():
        target = model.target_encoder(batch)
        context = model.context_encoder(batch, masks.context)
        prediction = model.predictor(context, masks.context)
    z = _visible_mean(context, masks.context)
    reference = VICRegLoss(lambda_param=25, mu_param=25, nu_param=1)(z[:B], z[B:])
    torch.testing.assert_close(out["vicreg_loss"], reference, rtol=1e-4, atol=1e-5)
    jepa = normalized_smooth_l1(prediction, target, masks.target)
    torch.testing.assert_close(out["jepa_loss"], jepa)
    torch.testing.assert_close(out["loss"], jepa + weight * reference, rtol=1e-4, atol=1e-6)
    # the regulariser trains the context encoder, not the target
    assert any(n.startswith("context_encoder.") for n in grads)
    assert not any(n.startswith("target_encoder.") for n in grads)
    assert any("token" in n for n in grads)  # the predictor's mask token still learns


def test_second_view_is_used_only_for_the_invariance_term() -> None:
    v1, v2 = _images(views=2).unbind(dim=1)
    labels = torch.arange(B)
    varcov = _model(vicreg=VICRegTerms(sim_weight=0.0))
    images, y = varcov.split_batch([[v1, v2], labels])
    assert images is v1 and y is labels  # the second view is dropped before any compute
    full = _model(vicreg=VICRegTerms())
    stacked, _ = full.split_batch([[v1, v2], labels])
    assert stacked.shape == (B, 2, 3, SIZE, SIZE) and torch.equal(stacked[:, 1], v2)
    with pytest.raises(ValueError, match="num_views: 2"):
        full.shared_step(v1)


def test_quickstart_twin_trains_with_two_views_through_the_cli(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[2] / "configs/quickstart_cnn_cjepa.yaml"
    cli = main([
        "fit", "--config", str(config), "--trainer.fast_dev_run", "2",
        "--data.init_args.batch_size", "8", "--trainer.logger", "false",
        "--trainer.callbacks", "[]", "--trainer.default_root_dir", str(tmp_path),
    ])  # fmt: skip
    assert isinstance(cli.model, CNNJEPA) and cli.model.num_views == 2
    assert cli.datamodule.num_views == 2
    metrics = cli.trainer.callback_metrics
    assert metrics["train/vic_invariance"] > 0  # two different views were compared
    assert metrics["train/vic_variance"] > 0
    torch.testing.assert_close(
        metrics["train/loss"],
        metrics["train/jepa_loss"] + 0.001 * metrics["train/vicreg_loss"],
    )
