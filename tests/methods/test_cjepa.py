"""C-JEPA / I-JEPA on ViTs: encoder, predictor, loss parity, gradients, EMA, views."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import pytest
import torch
from lightly.models import utils as lightly_utils
from torch import nn

from jepa_lightning import CJEPA, IJEPA, DigitsDataModule
from jepa_lightning.data.batch import split_batch
from jepa_lightning.losses import VICRegTerms
from jepa_lightning.masking import IJEPAMultiBlockMasking, PatchMasks
from jepa_lightning.modules import ViTEncoder, ViTPredictor, sincos_pos_embed_2d

TINY = {
    "arch": "vit_tiny",
    "patch_size": 4,
    "image_size": 32,
    "depth": 1,
    "predictor_embed_dim": 48,
    "predictor_depth": 1,
}


def _model(cls: type[CJEPA] = CJEPA, **kw: object) -> CJEPA:
    torch.manual_seed(0)
    return cls(**{**TINY, **kw})  # type: ignore[arg-type]


def test_sincos_positions_match_the_mae_ijepa_reference() -> None:
    ref = lightly_utils.get_2d_sincos_pos_embed(64, 6, cls_token=False)
    torch.testing.assert_close(sincos_pos_embed_2d(64, 6, 6), torch.from_numpy(ref).float())


def test_context_encoder_sees_only_its_tokens() -> None:
    torch.manual_seed(0)
    enc = ViTEncoder("vit_tiny", image_size=32, patch_size=8, depth=2).eval()
    images = torch.randn(2, 3, 32, 32)
    keep = torch.tensor([[0, 1, 5], [2, 7, 15]])  # (B, K) patch indices on the 4x4 grid
    out = enc(images, keep)  # (B, K, D)
    assert out.shape == (2, 3, 192) and enc(images).shape == (2, 16, 192)
    # Changing pixels of patches outside the context changes nothing (no class token, no leak).
    other = images.clone()
    other[0, :, 8:16, 8:16] += 50.0  # patch 5 of image 0 is kept -> changes image 0
    other[1, :, 24:32, 0:8] += 50.0  # patch 12 of image 1 is not kept -> no change
    changed = enc(other, keep)
    assert not torch.allclose(changed[0], out[0])
    torch.testing.assert_close(changed[1], out[1])
    with pytest.raises(ValueError, match="4x4 grid"):
        enc(torch.randn(1, 3, 48, 48))


def test_predictor_blocks_are_independent_and_widths_configurable() -> None:
    torch.manual_seed(0)
    pred = ViTPredictor(encoder_dim=40, grid=(4, 4), embed_dim=24, depth=2, num_heads=3).eval()
    ctx, ctx_idx = torch.randn(2, 5, 40), torch.randint(0, 16, (2, 5))
    targets = torch.randint(0, 16, (2, 3, 4))
    out = pred(ctx, ctx_idx, targets)
    assert out.shape == (2, 3, 4, 40)
    other = targets.clone()
    other[:, 2] = (other[:, 2] + 1) % 16  # move block 2 only: blocks 0 and 1 unchanged
    moved = pred(ctx, ctx_idx, other)
    torch.testing.assert_close(moved[:, :2], out[:, :2])
    assert not torch.allclose(moved[:, 2], out[:, 2])


def _hand_ijepa_loss(model: CJEPA, images: torch.Tensor, masks: object) -> torch.Tensor:
    """I-JEPA's loss written out: LayerNorm (no affine) of the target tokens, per-block gather,
    smooth-L1 (β = 1) averaged over every element."""
    ctx, tgt = masks.context, masks.targets  # type: ignore[attr-defined]
    with torch.no_grad():
        h = model.target_encoder(images)  # (B, N, D)
        mu = h.mean(-1, keepdim=True)
        h = (h - mu) / torch.sqrt(((h - mu) ** 2).mean(-1, keepdim=True) + 1e-5)
    z = model.predictor(model.context_encoder(images, ctx), ctx, tgt)  # (B, n, Nt, D)
    b, n, _ = tgt.shape
    target = torch.stack(
        [torch.stack([h[i, tgt[i, k]] for k in range(n)]) for i in range(b)]
    )  # (B, n, Nt, D)
    d = (z - target).abs()
    return torch.where(d < 1, 0.5 * d**2, d - 0.5).mean()


@pytest.mark.parametrize("cls", [IJEPA, CJEPA])
def test_loss_without_vicreg_equals_hand_written_ijepa(cls: type[CJEPA]) -> None:
    model = _model(cls, vicreg_weight=0.0) if cls is CJEPA else _model(cls)
    assert not model.uses_vicreg
    images = torch.randn(4, 3, 32, 32)
    model.mask_generator.manual_seed(5)
    out = model.shared_step(torch.stack([images, images.flip(-1)], dim=1))  # 2nd view ignored
    model.mask_generator.manual_seed(5)
    masks = model.sample_masks(4)
    expected = _hand_ijepa_loss(model, images, masks)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    assert "vicreg_loss" not in out and out["jepa_loss"] is out["loss"]


def test_cjepa_loss_adds_weighted_vicreg_on_patch_means_of_two_views() -> None:
    terms = VICRegTerms(sim_weight=2.0, std_weight=3.0, cov_weight=5.0)
    model = _model(vicreg_weight=0.01, vicreg=terms)
    views = torch.randn(6, 2, 3, 32, 32)
    model.mask_generator.manual_seed(9)
    out = model.shared_step(views)
    model.mask_generator.manual_seed(9)
    masks = model.sample_masks(12)  # both views in one batch, each image its own masks
    m1 = PatchMasks(masks.context[:6], masks.targets[:6], masks.grid)
    m2 = PatchMasks(masks.context[6:], masks.targets[6:], masks.grid)
    v1, v2 = views[:, 0], views[:, 1]
    jepa = (_hand_ijepa_loss(model, v1, m1) + _hand_ijepa_loss(model, v2, m2)) / 2
    z1 = model.context_encoder(v1, m1.context).mean(1)  # (B, D) patch means of each view
    z2 = model.context_encoder(v2, m2.context).mean(1)
    inv = ((z1 - z2) ** 2).mean()
    std = [torch.sqrt(z.var(0) + 1e-4) for z in (z1, z2)]
    var = sum(torch.relu(1 - s).mean() for s in std) / 2
    cov = 0.0
    for z in (z1, z2):
        c = torch.cov(z.T)  # (D, D), unbiased
        cov = cov + (c - torch.diag(torch.diag(c))).pow(2).sum() / z.shape[1]
    expected = jepa + 0.01 * (2.0 * inv + 3.0 * var + 5.0 * cov)
    torch.testing.assert_close(out["jepa_loss"], jepa, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["vic_invariance"], inv, rtol=1e-5, atol=1e-7)


def test_vicreg_branches_per_mode() -> None:
    images = torch.randn(4, 3, 32, 32)
    for mode, count in (("encoders", 2), ("blocks", 4)):
        model = _model(vicreg_mode=mode)
        masks = model.sample_masks(4)
        fwd = model.forward_masked(images, masks)
        branches = model.regularizer_embeddings(fwd, masks, 1)
        assert len(branches) == count and all(z.shape == (4, 192) for z in branches)
        if mode == "encoders":
            torch.testing.assert_close(branches[1], model.embed(images))  # target patch mean
        else:
            torch.testing.assert_close(branches[3], fwd.prediction[:, 3].mean(1))


@pytest.mark.parametrize("mode", ["views", "encoders", "blocks"])
def test_every_trainable_parameter_gets_a_gradient_and_the_target_none(
    mode: str, check_gradients: Callable[[nn.Module], None]
) -> None:
    model = _model(vicreg_mode=mode)
    out = model.shared_step(torch.randn(4, 2, 3, 32, 32))
    out["loss"].backward()
    check_gradients(model)
    assert out["embedding"].shape == (4, 192) and not out["embedding"].requires_grad
    assert model.embed_dim == 192


def test_views_mode_needs_two_views_in_training_only() -> None:
    model = _model()
    with pytest.raises(ValueError, match="num_views: 2"):
        model.shared_step(torch.randn(4, 3, 32, 32))
    model.eval()  # evaluation loaders give one view: variance/covariance only
    out = model.shared_step(torch.randn(4, 3, 32, 32))
    assert out["vic_invariance"].item() == 0.0 and out["vic_variance"].item() > 0


def test_split_batch_handles_lists_of_views() -> None:
    v1, v2, y = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4), torch.tensor([0, 1])
    images, labels = _model(vicreg_weight=0.0).split_batch([[v1, v2], y])
    assert images is v1 and labels is y  # single-view methods get the first view
    stacked, _ = _model().split_batch([[v1, v2], y])
    assert stacked.shape == (2, 2, 3, 4, 4) and torch.equal(stacked[:, 1], v2)
    assert _model().split_batch(v1)[0] is v1 and split_batch((v1, y))[0] is v1


def test_old_vicreg_keys_are_deprecated_aliases_of_vicreg_terms() -> None:
    with pytest.warns(DeprecationWarning, match="regularizer=VICRegTerms"):
        old = _model(sim_weight=2.0, cov_weight=5.0, gather_distributed=False)
    new = _model(vicreg=VICRegTerms(sim_weight=2.0, cov_weight=5.0, gather_distributed=False))
    for key in ("sim_weight", "std_weight", "cov_weight", "eps", "gather_distributed"):
        assert getattr(old.vicreg, key) == getattr(new.vicreg, key)
    assert "sim_weight" not in old.hparams


def test_datamodule_gives_two_independent_views_when_asked() -> None:
    dm = DigitsDataModule(image_size=16, batch_size=4, num_views=2, seed=0)
    dm.setup()
    views, label = dm.train_ssl[0]  # type: ignore[index]
    assert isinstance(views, list) and len(views) == 2 and isinstance(label, int)
    assert views[0].shape == (3, 16, 16) and not torch.equal(views[0], views[1])
    single, _ = DigitsDataModule(image_size=16).train_transform(torch.zeros(3, 8, 8)), None
    assert isinstance(single, torch.Tensor)
    val_image, _ = dm.val[0]  # type: ignore[index]
    assert isinstance(val_image, torch.Tensor)  # evaluation splits stay single-view
    with pytest.raises(ValueError, match="num_views"):
        DigitsDataModule(num_views=0)


def test_mask_preview_shapes() -> None:
    model = _model()
    out = model.mask_preview(torch.randn(2, 3, 32, 32))
    assert out["context"].shape == out["target"].shape == out["similarity"].shape == (2, 8, 8)
    assert not (out["context"] & out["target"]).any()


def test_target_moves_only_by_ema_after_one_real_optimiser_step() -> None:
    model = _model(IJEPA, ema_start=0.9, ema_end=0.9, ema_schedule="constant", warmup_epochs=0)
    before = {n: p.detach().clone() for n, p in model.target_encoder.named_parameters()}
    online_before = {n: p.detach().clone() for n, p in model.context_encoder.named_parameters()}
    trainer = pl.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, DigitsDataModule(image_size=32, batch_size=8, seed=0))
    assert trainer.global_step == 1
    online = dict(model.context_encoder.named_parameters())
    for name, p in model.target_encoder.named_parameters():
        assert p.grad is None and not p.requires_grad
        expected = 0.9 * before[name] + 0.1 * online[name].detach()
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)
    moved = [n for n, p in online.items() if not torch.equal(p.detach(), online_before[n])]
    assert len(moved) == len(online)  # the online encoder learned


def test_invalid_settings_raise() -> None:
    with pytest.raises(ValueError, match="multiple of patch_size"):
        CJEPA(**{**TINY, "image_size": 30})
    with pytest.raises(ValueError, match="patch grid"):
        CJEPA(**{**TINY, "patch_size": 8})  # 4x4 grid: 4 target blocks do not fit
    CJEPA(**{**TINY, "patch_size": 8, "masking": IJEPAMultiBlockMasking(num_blocks=1)})
    with pytest.raises(ValueError, match="vicreg_mode"):
        CJEPA(**{**TINY, "vicreg_mode": "pixels"})
