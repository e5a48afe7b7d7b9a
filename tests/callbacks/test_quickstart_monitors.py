"""End to end: the shipped quickstart config, its monitors and what lands in TensorBoard; the
mask pictures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from callback_toys import ToyData, ToyJEPA, sgd
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jepa_lightning import CNNJEPA, DigitsDataModule, MaskImageLogger
from jepa_lightning.callbacks.mask_images import mask_panels
from jepa_lightning.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MONITOR_SCALARS = {
    "probe/train_loss",
    "probe/val_top1",
    "probe/val_top5",
    "knn/top1",
    "knn/top5",
    "collapse/rankme",
    "collapse/feature_std",
}


def _events(save_dir: Path) -> EventAccumulator:
    files = sorted(save_dir.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {save_dir}"
    acc = EventAccumulator(str(files[-1].parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.mark.slow
def test_quickstart_logs_monitors_to_tensorboard(tmp_path: Path) -> None:
    config = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    classes = [cb["class_path"].rsplit(".", 1)[-1] for cb in config["trainer"]["callbacks"]]
    assert {"OnlineLinearProbe", "KNNMonitor", "CollapseMonitor", "MaskImageLogger"} <= set(classes)
    # The one change for test speed: a 96-image k-NN bank instead of all 1,437.
    for cb in config["trainer"]["callbacks"]:
        if cb["class_path"].endswith("KNNMonitor"):
            cb.setdefault("init_args", {})["max_bank_size"] = 96
    cfg = tmp_path / "quickstart_tiny.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cli = main(
        [
            "fit",
            "--config", str(cfg),
            "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "2",
            "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false",
            "--data.init_args.batch_size", "16",
            "--trainer.logger.init_args.save_dir", str(tmp_path),
        ]
    )  # fmt: skip
    events = _events(tmp_path)
    scalars = set(events.Tags()["scalars"])
    assert scalars >= MONITOR_SCALARS, MONITOR_SCALARS - scalars
    for tag in ("knn/top1", "knn/top5", "probe/val_top1", "probe/val_top5"):
        assert 0.0 <= events.Scalars(tag)[-1].value <= 1.0
    assert 1.0 <= events.Scalars("collapse/rankme")[-1].value <= cli.model.embed_dim
    assert events.Tags()["images"] == ["masks/preview"]
    image = events.Images("masks/preview")[-1]
    assert image.height >= 128 * 8 and image.width >= 3 * 128  # 8 rows of 3 panels, upscaled
    knn = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "KNNMonitor")
    assert knn.last_result["bank_size"] == 96 and knn.last_result["num_queries"] == 32


def test_mask_logger_keeps_validation_masks_and_logs(tmp_path: Path) -> None:
    def validate(callbacks: list) -> tuple[float, Trainer]:
        torch.manual_seed(0)
        model = CNNJEPA(backbone="resnet18", small_images=True, image_size=32)
        trainer = Trainer(
            accelerator="cpu",
            limit_val_batches=2,
            logger=TensorBoardLogger(tmp_path, name=str(len(callbacks))),
            callbacks=callbacks,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        data = DigitsDataModule(image_size=32, batch_size=8)
        metrics = trainer.validate(model, datamodule=data, verbose=False)[0]
        return metrics["val/loss"], trainer

    loss_plain, _ = validate([])
    loss_logged, trainer = validate([MaskImageLogger(num_images=3, min_size=32)])
    assert loss_logged == loss_plain  # the module's mask RNG was restored
    trainer.loggers[0].experiment.flush()
    events = _events(tmp_path / "1")
    assert events.Tags()["images"] == ["masks/preview"]
    assert events.Images("masks/preview")[0].height == 3 * 32 + 4 * 2  # 3 rows + padding


def test_mask_logger_warns_once_without_mask_preview(tmp_path: Path) -> None:
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=2,
        logger=TensorBoardLogger(tmp_path),
        callbacks=[MaskImageLogger()],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with pytest.warns(UserWarning, match="mask_preview") as record:
        trainer.fit(ToyJEPA(optimizer=sgd(0.0)), datamodule=ToyData(n_train=64, n_val=32))
    assert sum("mask_preview" in str(w.message) for w in record) == 1


def test_mask_panels_draw_targets_and_similarity() -> None:
    images = torch.full((2, 3, 8, 8), 0.5)
    target = torch.zeros(2, 2, 2, dtype=torch.bool)
    target[:, 0, 0] = True  # top-left cell (4x4 px) is a target
    context = ~target
    similarity = torch.tensor([[1.0, -1.0], [0.0, 0.0]]).expand(2, 2, 2)
    grid = mask_panels(images, context, target, similarity, min_size=8)
    assert grid.shape == (3, 2 * 8 + 3 * 2, 3 * 8 + 4 * 2)
    row = grid[:, 2:10]  # first image's row (padding 2)
    plain, masks, heat = (row[:, :, 2 + i * 10 : 10 + i * 10] for i in range(3))
    assert torch.allclose(plain, torch.full_like(plain, 0.5))
    assert masks[0, 1, 1] > 0.7 > masks[2, 1, 1]  # target cell tinted red
    assert torch.allclose(masks[:, 6, 6], torch.full((3,), 0.5))  # context cell untouched
    assert heat[0, 1, 6] < heat[2, 1, 6]  # similarity -1 (top-right cell): blue
    assert heat[0, 6, 2] == pytest.approx(heat[2, 6, 2])  # similarity 0: grey/white
