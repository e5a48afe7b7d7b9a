"""Checks the JEPA modules run before and during training: BatchNorm set-up for the batch size
and ``sync_batchnorm``, and finite parameters before a checkpoint is written."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn

from jepa_lightning.modules.masked_bn import MaskedBatchNorm2d


def setup_batchnorm(module: nn.Module, trainer: pl.Trainer, stage: str) -> None:
    """Sync masked BatchNorm under ``Trainer(sync_batchnorm=True)``; check the batch size.

    Lightning's ``sync_batchnorm`` converts only ``_BatchNorm`` subclasses (here: the
    predictor's); :class:`MaskedBatchNorm2d` layers — context and target encoder — get
    ``sync = True`` and all-reduce their statistics themselves.
    """
    # NOTE: ``_layer_sync`` is how Lightning's parallel strategies hold sync_batchnorm.
    sync = stage == "fit" and getattr(trainer.strategy, "_layer_sync", None) is not None
    if sync:
        for m in module.modules():
            if isinstance(m, MaskedBatchNorm2d):
                m.sync = True
    batch_size = getattr(trainer.datamodule, "batch_size", None)
    too_small = stage == "fit" and isinstance(batch_size, int) and batch_size < 2
    norms = (MaskedBatchNorm2d, nn.modules.batchnorm._BatchNorm)
    has_bn = any(isinstance(m, norms) for m in module.modules())
    if too_small and has_bn and not (sync and trainer.world_size > 1):
        raise ValueError(
            f"data.init_args.batch_size={batch_size} is too small: BatchNorm in training "
            "mode needs at least 2 images per device to compute batch statistics. Use "
            "batch_size >= 2 (tens of images per device are usual), or sync_batchnorm=True "
            "with several devices."
        )


def check_finite_parameters(module: nn.Module, step: int) -> None:
    """Refuse to save weights that could not be resumed (one host sync per checkpoint)."""
    named = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
    if not named:
        return
    finite = torch.stack([torch.isfinite(p).all() for _, p in named]).tolist()
    bad = [n for (n, _), ok in zip(named, finite, strict=True) if not ok]
    if bad:
        raise FloatingPointError(
            f"Parameters are not finite at step {step} ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}): not saving this checkpoint; the last one "
            "on disk is kept. Likely causes: learning rate too high, fp16 overflow (use "
            "bf16-mixed), or corrupt input; lower the lr or enable gradient clipping."
        )
