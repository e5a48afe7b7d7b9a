"""Linear evaluation, k-NN evaluation and fine-tuning modules with real Trainers on a small
subset of the digits."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import Dataset, Subset

from jepa_lightning import DigitsDataModule, FineTune, KNNEvaluation, LinearEvaluation
from jepa_lightning.callbacks.metrics import knn_accuracy
from jepa_lightning.modules import recalibrate_batchnorm

SPEC = {"class_path": "jepa_lightning.CNNJEPA",
        "init_args": {"backbone": "resnet18", "small_images": True}}  # fmt: skip


class SmallDigits(DigitsDataModule):
    """The first 96 training and 48 validation digits."""

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        ssl, train, val = super().build_datasets()
        return Subset(ssl, range(96)), Subset(train, range(96)), Subset(val, range(48))


def _trainer(tmp_path: Path, **kwargs: object) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    return pl.Trainer(**{**defaults, **kwargs})  # type: ignore[arg-type]


class CountingEmbed:
    """Counts the images the pretrained method embeds."""

    def __init__(self, module: LinearEvaluation | KNNEvaluation) -> None:
        self.images = 0
        inner = module.pretrained.embed

        def embed(images: torch.Tensor) -> torch.Tensor:
            self.images += images.shape[0]
            return inner(images)

        module.pretrained.embed = embed  # type: ignore[method-assign]


def test_linear_evaluation_caches_once_and_restores_the_data(tmp_path: Path) -> None:
    pl.seed_everything(0)
    data = SmallDigits(image_size=32, batch_size=32)
    model = LinearEvaluation(method=SPEC, image_size=32, batch_size=32)
    counter = CountingEmbed(model)
    trainer = _trainer(tmp_path, max_epochs=4, num_sanity_val_steps=1)
    trainer.fit(model, data)
    assert counter.images == 96 + 48  # each image embedded exactly once over 4 epochs
    assert "train_dataloader" not in vars(data) and "val_dataloader" not in vars(data)
    images, _ = next(iter(data.train_dataloader()))  # the SSL image loader again
    assert images.shape == (32, 3, 32, 32)

    (train_x, train_y), (val_x, val_y) = model.cached_features().values()
    assert train_x.shape == (96, 512) and val_x.shape == (48, 512)
    torch.testing.assert_close(model.feature_mean, train_x.mean(dim=0))
    knn = knn_accuracy(val_x, val_y, train_x, train_y, 10, k=200, temperature=0.1)
    metrics = trainer.callback_metrics
    assert float(metrics["knn/top1"]) == pytest.approx(knn[1])
    with torch.no_grad():
        top1 = (model(val_x).argmax(dim=1) == val_y).float().mean()
    assert float(metrics["val/top1"]) == pytest.approx(float(top1))
    assert trainer.optimizers[0].param_groups[0]["lr"] < 1e-3  # cosine decay ran
    # eval features equal what a fresh embedding of the val images gives
    val_images = torch.stack([data.val[i][0] for i in range(4)])  # type: ignore[index]
    torch.testing.assert_close(model.embed(val_images.to(model.device)), val_x[:4])


def test_knn_evaluation_validate_matches_the_linear_modules_knn(tmp_path: Path) -> None:
    pl.seed_everything(0)
    data = SmallDigits(image_size=32, batch_size=32)
    linear = LinearEvaluation(method=SPEC, image_size=32, knn_k=50)
    _trainer(tmp_path, max_epochs=1).fit(linear, data)
    knn = KNNEvaluation(method=linear.pretrained, k=50)
    counter = CountingEmbed(knn)
    results = _trainer(tmp_path).validate(knn, data, verbose=False)
    assert results[0]["knn/top1"] == pytest.approx(linear.knn_result[1])
    assert results[0]["knn/top5"] == pytest.approx(linear.knn_result[5])
    assert knn.result["bank_size"] == 96 and knn.result["num_queries"] == 48
    assert counter.images == 96 + 48


def test_linear_evaluation_checkpoint_reloads(tmp_path: Path) -> None:
    pl.seed_everything(0)
    data = SmallDigits(image_size=32, batch_size=48)
    model = LinearEvaluation(method=SPEC, image_size=32, knn_k=0)
    trainer = _trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(model, data)
    trainer.save_checkpoint(tmp_path / "linear.ckpt")
    reloaded = LinearEvaluation.load_from_checkpoint(tmp_path / "linear.ckpt")
    images = torch.stack([data.val[i][0] for i in range(3)])  # type: ignore[index]
    torch.testing.assert_close(
        reloaded.eval().predict_images(images), model.eval().predict_images(images)
    )


@pytest.mark.parametrize("backbone_lr", [1e-3, 0.0])
def test_finetune_trains_the_encoder_only(tmp_path: Path, backbone_lr: float) -> None:
    pl.seed_everything(0)
    data = SmallDigits(image_size=32, batch_size=16)
    model = FineTune(method=SPEC, image_size=32, lr=1e-2, backbone_lr=backbone_lr, warmup_epochs=0)
    before = {k: v.clone() for k, v in model.pretrained.state_dict().items()}
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, data)
    after = model.pretrained.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    encoder_weights = {
        k
        for k in changed
        if k.startswith("target_encoder.") and "running" not in k and "num_batches" not in k
    }
    assert bool(encoder_weights) == (backbone_lr > 0)
    if backbone_lr == 0:  # a frozen encoder stays in eval mode: its BN statistics are kept
        assert not changed
    assert not any(k.startswith(("context_encoder.", "predictor.")) for k in changed)
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert ("backbone" in groups) == (backbone_lr > 0)
    assert groups["head_no_decay"]["weight_decay"] == 0.0
    assert 0.0 <= float(trainer.callback_metrics["val/top1"]) <= 1.0


def test_context_encoder_batchnorm_is_recalibrated_on_full_training_images(tmp_path: Path) -> None:
    pl.seed_everything(0)
    data = SmallDigits(image_size=32, batch_size=32)
    method = LinearEvaluation(method=SPEC, image_size=32).pretrained
    for m in method.context_encoder.modules():  # statistics as if gathered on other images
        if hasattr(m, "running_mean"):
            m.running_mean.fill_(3.0)
    data.setup()
    expected = recalibrate_batchnorm(
        copy.deepcopy(method.context_encoder),
        [x for x, _ in data.train_eval_dataloader()],  # the 3 batches of 32 training images
    )
    knn = KNNEvaluation(method=method, encoder="context", k=20)
    target_before = copy.deepcopy(knn.pretrained.target_encoder.state_dict())
    _trainer(tmp_path).validate(knn, data, verbose=False)
    got = knn.pretrained.context_encoder
    torch.testing.assert_close(got.bn1.running_mean, expected.bn1.running_mean)
    torch.testing.assert_close(got.layer4[1].bn2.running_var, expected.layer4[1].bn2.running_var)
    assert not got.training  # evaluated in eval mode, with the new statistics
    for key, value in knn.pretrained.target_encoder.state_dict().items():
        assert torch.equal(value, target_before[key]), key  # the target encoder is untouched
    # the target-encoder evaluation (the default) leaves every statistic as it is
    knn_t = KNNEvaluation(method=copy.deepcopy(method), k=20)
    _trainer(tmp_path).validate(knn_t, data, verbose=False)
    assert float(knn_t.pretrained.context_encoder.bn1.running_mean[0]) == 3.0
