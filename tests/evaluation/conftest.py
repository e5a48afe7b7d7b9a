"""Fixtures of the evaluation tests: pretraining checkpoints written by the real CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from jepa_lightning.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def pretrain_config(tmp: Path, **trainer: Any) -> Path:
    """``configs/quickstart.yaml`` with only a checkpoint callback and no logger (the
    monitors cost time and are tested elsewhere), written to ``tmp``."""
    config = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    config["trainer"].update(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp),
        callbacks=[
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(tmp / "checkpoints"), "save_last": True},
            }
        ],
        **trainer,
    )
    path = tmp / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def pretrain(tmp: Path, args: list[str] | None = None, **trainer: Any) -> Path:
    """Run ``jepa-lightning fit`` on the quickstart-like config; the last checkpoint's path."""
    main(["fit", "--config", str(pretrain_config(tmp, **trainer)), *(args or [])])
    ckpt = tmp / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CNN-JEPA ResNet-18 (small-image stem, 32 px) checkpoint after 2 steps of batch 8."""
    tmp = tmp_path_factory.mktemp("tiny_pretrain")
    return pretrain(
        tmp,
        ["--data.init_args.batch_size", "8"],
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
    )


@pytest.fixture(scope="session")
def pretrain_fn() -> Callable[..., Path]:
    """:func:`pretrain`, for tests that pretrain with their own settings."""
    return pretrain
