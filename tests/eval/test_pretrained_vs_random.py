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

#: Measured with this protocol (linear_digits.yaml: 90 epochs of Adam on cached features; top-1
#: on the 360 validation digits, linear / k-NN; benchmarks/RESULTS.md):
#:   random init (exactly the pretraining's initial weights):        0.953 / 0.786
#:   the quickstart (12 epochs, variance/covariance weight 0.1):     0.964 / 0.822
#:     after epochs 1, 4, 8, 10 of its schedule:                     0.917 / 0.808, 0.944 / 0.806,
#:                                                                   0.964 / 0.825, 0.969 / 0.833
#:   same, 8-epoch schedule, at its end:                             0.956 / 0.800
#:   plain CNN-JEPA (no regulariser), 4 epochs:                      0.867 / 0.522 (rank collapse)
#:   variance/covariance weight 0.001 / 0.01 / 0.1, 4 epochs:        0.942 / 0.794, 0.919 / 0.797,
#:                                                                   0.933 / 0.817
#: The linear probe needs the longer schedule: every 4-epoch variant tried (weights, crops
#: 0.5-1 without flip, lr 0.0005) stayed at 0.91-0.94 while k-NN was above random init.
#: The 12-epoch numbers are with 2 CPU threads; the same config run with 1 thread (another
#: float summation order, so another trajectory) ended at 0.939 / 0.806: k-NN above random init
#: in both, the linear probe's margin (~1 point) is within that run-to-run spread. With
#: seed_everything 1 the same config gave 0.953 / 0.739 vs that seed's random init 0.953 / 0.833:
#: the k-NN assertion holds for the shipped seed (0), it is a regression check of the shipped
#: config, not evidence that the recipe beats random init in general.
LINEAR_GAP = (
    "Known gap: the quickstart's linear probe beats random init (95.3 %) only within noise "
    "(96.4 % with 2 threads, 93.9 % with 1); k-NN beats it in both. Measurements above."
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
def test_quickstart_beats_random_init(
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
    assert pretrained["knn"] > random_init["knn"]
    if not pretrained["linear"] > random_init["linear"]:
        pytest.xfail(LINEAR_GAP)


@pytest.mark.slow
def test_evaluation_ranks_trained_features_above_random(
    tmp_path: Path, random_init: dict[str, float]
) -> None:
    """The protocol itself separates good features from random ones: one epoch of supervised
    fine-tuning from the same random initialisation beats it on both measures (so a JEPA
    result below random init is the pretraining's, not the evaluation's)."""
    pl.seed_everything(0)
    data = DigitsDataModule(image_size=32, batch_size=64, crop_scale=(0.5, 1.0), hflip=False)
    tuned = FineTune(method=SPEC, image_size=32, lr=1e-3, backbone_lr=1e-3, warmup_epochs=0)
    trainer = pl.Trainer(max_epochs=1, limit_val_batches=0, accelerator="cpu", logger=False,
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
    print(f"supervised 1 epoch: linear {linear:.4f} k-NN {knn:.4f}; random init {random_init}")
    assert linear > random_init["linear"] and knn > random_init["knn"]
