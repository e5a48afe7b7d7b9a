"""Learning-rate and weight-decay schedules as Lightning wires them: per step, from the
trainer's step counts (shared by the pretraining methods and the fine-tuning evaluation)."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch

from jepa_lightning.schedules import warmup_cosine


def warmup_cosine_lr(
    trainer: pl.Trainer,
    optimizer: torch.optim.Optimizer,
    warmup_epochs: float,
    start_ratio: float = 0.0,
    final_ratio: float = 0.0,
) -> dict[str, Any]:
    """``configure_optimizers``' return value: ``optimizer`` with a per-step ``LambdaLR`` that
    warms up linearly from ``start_ratio`` × the peak over ``warmup_epochs`` (fractions
    allowed), then decays with a cosine to ``final_ratio`` × the peak at the last step."""
    total = int(trainer.estimated_stepping_batches)
    if trainer.train_dataloader is None:  # max_steps without max_epochs: not loaded yet
        trainer.fit_loop.setup_data()
    batches = trainer.num_training_batches  # per epoch, after limit_train_batches
    accumulate = trainer.accumulate_grad_batches
    steps_per_epoch = math.ceil(batches / accumulate) if math.isfinite(batches) else total
    warmup = round(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        return warmup_cosine(step, total, warmup, start_ratio, 1.0, final_ratio)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
    }


def cosine_weight_decay(trainer: pl.Trainer, step: int, final: float) -> None:
    """Set every decayed parameter group's weight decay on a cosine from its
    ``initial_weight_decay`` to ``final`` over training (I-JEPA/C-JEPA: 0.04 -> 0.4)."""
    total = int(trainer.estimated_stepping_batches)
    for opt in trainer.optimizers:
        for group in opt.param_groups:
            start = group.get("initial_weight_decay", 0.0)
            if start > 0:
                group["weight_decay"] = warmup_cosine(step, total, 0, start, start, final)
