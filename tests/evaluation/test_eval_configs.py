"""Every shipped evaluation config runs through the real CLI on a tiny budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jepa_lightning import FineTune, KNNEvaluation, LinearEvaluation
from jepa_lightning.cli import main

EVAL_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs/eval").glob("*.yaml"))


def _base_args(path: Path, tmp_path: Path, image_folder: Path) -> list[str]:
    config = yaml.safe_load(path.read_text())
    args = [
        "--config", str(path),
        "--data.init_args.batch_size", "4",
        "--data.init_args.num_workers", "0",
        "--trainer.accelerator", "cpu",
        "--trainer.precision", "32-true",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    if config["data"]["class_path"].endswith(("ImageFolderDataModule", "CIFAR10DataModule")):
        args += ["--data.init_args.root", str(image_folder)]
    if config["data"]["init_args"].get("image_size", 0) > 128:  # ResNet-50 at 224 px: shrink
        args += ["--data.init_args.image_size", "128"]  # (a 4x4 mask grid at stride 32)
    if "logger" in config["trainer"] and config["trainer"]["logger"]:
        args += ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    return args


def test_eval_configs_exist() -> None:
    names = {p.name for p in EVAL_CONFIGS}
    assert {"linear_digits.yaml", "linear_cifar10.yaml", "linear_imagenet100.yaml"} <= names
    assert {"knn_digits.yaml", "finetune_digits.yaml"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("path", EVAL_CONFIGS, ids=lambda p: p.name)
def test_eval_config_runs(
    path: Path, tmp_path: Path, image_folder: Path, tiny_checkpoint: Path
) -> None:
    args = _base_args(path, tmp_path, image_folder)
    small = yaml.safe_load(path.read_text())["model"]["init_args"]["method"]["init_args"]
    if small.get("small_images"):  # the tiny checkpoint is a ResNet-18 with the small stem
        args += ["--model.init_args.checkpoint", str(tiny_checkpoint)]
    if path.name.startswith("knn_"):
        args += ["--trainer.limit_val_batches", "2", "--model.init_args.max_bank_size", "10"]
        cli = main(["validate", *args])
        assert isinstance(cli.model, KNNEvaluation)
        assert cli.model.result["bank_size"] == 10  # a seeded subset of the training split
        assert 0 < cli.model.result["num_queries"] <= 8  # 2 batches of 4 (or the whole split)
        assert 0.0 <= cli.trainer.callback_metrics["knn/top1"] <= 1.0
        return
    cli = main(["fit", *args, "--trainer.fast_dev_run", "1"])
    assert isinstance(cli.model, LinearEvaluation | FineTune)
    assert cli.trainer.global_step == 1
    assert cli.trainer.callback_metrics["train/loss"].isfinite()
    assert 0.0 <= cli.trainer.callback_metrics["val/top1"] <= 1.0
    # the checkpoint, when given, is what is evaluated
    assert (cli.model.hparams.checkpoint is not None) == bool(small.get("small_images"))
