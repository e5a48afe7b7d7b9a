"""Acceptance: the evaluation protocol on a quickstart-like checkpoint vs a random init.

A short CNN-JEPA pretraining (the quickstart recipe: ResNet-18 with the small-image stem,
digits at 32 px, batch 64, AdamW lr 0.002, EMA 0.99 -> 1) through the real CLI, then linear
evaluation (with the k-NN of the same cached features) through ``configs/eval/linear_digits.yaml``
— of the checkpoint and of the same architecture randomly initialised (with the same seed, so
it is exactly the pretraining's starting point).
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
import pytest

from jepa_lightning import DigitsDataModule, FineTune, LinearEvaluation
from jepa_lightning.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs/eval/linear_digits.yaml"
PRETRAIN_EPOCHS = 2
SPEC = {"class_path": "jepa_lightning.CNNJEPA",
        "init_args": {"backbone": "resnet18", "small_images": True}}  # fmt: skip

#: Measured with this protocol (linear_digits.yaml: 90 epochs of Adam on cached features; top-1
#: on the 360 validation digits, linear / k-NN), quickstart recipe unless noted:
#:   random init (exactly the pretraining's initial weights):  0.953 / 0.786
#:   4-epoch schedule (the quickstart), after epochs 1-4:      0.928 / 0.817, 0.892 / 0.611,
#:                                                             0.833 / 0.547, 0.867 / 0.522
#:   2-epoch schedule (this test, 85 s), after epoch 2:        0.889 / 0.744
#:   2 epochs, ema_start 0.996, after epochs 1, 2:             0.911 / 0.825, 0.875 / 0.778
#:   2 epochs + variance hinge (notebook 02, weight 1):        0.911 / 0.822, 0.908 / 0.728
#:   quickstart (4 epochs) + VICRegTerms(sim_weight=0), i.e. C-JEPA's variance/covariance on
#:   the pooled context (benchmarks/RESULTS.md):                0.942 / 0.794 (plain: 0.867 / 0.522)
#: An exploratory script (100-epoch probe; random init 0.975 / 0.800 at 32 px) found the same
#: with lr 0.0005 and with crops 0.6-1 without flip; at 64 px (8x8 grid; random 0.975 / 0.736)
#: k-NN rose above random (0.761, 0.750 after 1, 2 epochs) while linear did not (0.975, 0.967);
#: along a 10-epoch schedule at 32 px k-NN kept falling (0.822, 0.694, 0.581, 0.567 at 2-8).
#: A supervised epoch from the same initialisation reaches 0.981 / 0.925: the protocol does rank
#: trained features above random ones (second test).
KNOWN_GAP = (
    "Known gap: short CNN-JEPA pretraining on the digits does not beat a random initialisation "
    "(random ResNet-18 features: 95.3 % linear / 78.6 % k-NN; the pretrained EMA encoder stays "
    "below on the linear probe at every length tried, 1-8 epochs, and beats k-NN only after the "
    "first epoch). Measured numbers above; remove this marker when the recipe beats it."
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
@pytest.mark.xfail(reason=KNOWN_GAP, strict=False)
def test_short_pretraining_beats_random_init(
    tmp_path: Path, random_init: dict[str, float], pretrain_fn
) -> None:
    t0 = time.perf_counter()
    ckpt = pretrain_fn(tmp_path, max_epochs=PRETRAIN_EPOCHS, limit_val_batches=0)
    pretrain_s = time.perf_counter() - t0
    pretrained = linear_eval(tmp_path, ckpt)
    print(f"pretraining {PRETRAIN_EPOCHS} epochs: {pretrain_s:.0f} s; "
          f"pretrained {pretrained}; random init {random_init}")
    assert pretrained["linear"] > random_init["linear"]
    assert pretrained["knn"] > random_init["knn"]


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
