"""Shared machinery of every JEPA LightningModule: EMA pairs, optimiser, schedules, logging."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from jepa_lightning.callbacks.ema import EMAMomentumSchedule
from jepa_lightning.modules.masked_bn import MaskedBatchNorm2d
from jepa_lightning.schedules import ScheduleKind, warmup_cosine
from jepa_lightning.seeding import MASKS, derive_seed


class JEPAModule(pl.LightningModule):
    """Base class of the JEPA methods. It wires, logs and schedules; the maths lives in
    ``nn.Module``s that subclasses build.

    A subclass sets ``self.context_encoder`` and ``self.target_encoder`` (an EMA copy) and
    implements three hooks:

    * :meth:`shared_step` — images ``(B, 3, H, W)`` -> dict with ``"loss"`` (and any other
      scalars to log, plus an optional detached ``"embedding"`` ``(B, D)`` for monitors);
    * :meth:`embed` — images -> pooled target-encoder features ``(B, D)`` for evaluation;
    * :meth:`ema_pairs` — extend with ``super().ema_pairs() + [...]`` for extra EMA modules;
    * optionally ``target_map(images) -> (B, C, h, w)``, the target encoder's feature grid,
      for :class:`~jepa_lightning.CollapseMonitor`'s target shares.

    Args:
        optimizer: Optimiser factory, called with parameter groups (AdamW by default). Set its
            peak ``lr`` and ``weight_decay`` in the config; bias and 1-D parameters get no
            weight decay.
        warmup_epochs: Linear learning-rate warm-up length in epochs (fractions allowed).
        warmup_start_lr_ratio: Learning rate at step 0 as a fraction of the peak.
        final_lr_ratio: Learning rate at the last step as a fraction of the peak (cosine decay).
        final_weight_decay: If set, weight decay follows a cosine from the optimiser's value to
            this one over training (I-JEPA/C-JEPA: 0.04 -> 0.4); ``None`` keeps it constant.
        ema_start: EMA momentum at the first step, used when no
            :class:`EMAMomentumSchedule` callback is configured.
        ema_end: EMA momentum at the last step (same fallback).
        ema_schedule: Shape of the momentum ramp: ``cosine`` (CNN-JEPA) or ``linear`` (I-JEPA).
        mask_seed: Seed of the masks. Each training batch's masks are drawn from a generator
            seeded with ``(mask_seed, global rank, epoch, batch index)``: they differ per rank,
            are reproducible, and continue exactly after resuming from any checkpoint.
        nan_check_every_n_steps: Check the loss for NaN/inf every this many steps (each check
            is a host sync on GPU; 0 disables).
    """

    context_encoder: nn.Module
    target_encoder: nn.Module

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_epochs: float = 10.0,
        warmup_start_lr_ratio: float = 0.0,
        final_lr_ratio: float = 0.0,
        final_weight_decay: float | None = None,
        ema_start: float = 0.996,
        ema_end: float = 1.0,
        ema_schedule: ScheduleKind = "cosine",
        mask_seed: int = 0,
        nan_check_every_n_steps: int = 1,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.warmup_epochs = warmup_epochs
        self.warmup_start_lr_ratio = warmup_start_lr_ratio
        self.final_lr_ratio = final_lr_ratio
        self.final_weight_decay = final_weight_decay
        self.ema_start = ema_start
        self.ema_end = ema_end
        self.ema_schedule = ema_schedule
        self.mask_seed = mask_seed
        self.nan_check_every_n_steps = nan_check_every_n_steps
        self._mask_generator: torch.Generator | None = None
        self._pending_generator_state: Tensor | None = None
        self._last_finite_loss = float("nan")

    # ---------------------------------------------------------------- hooks for subclasses
    def shared_step(self, images: Tensor) -> dict[str, Tensor]:
        """Compute the SSL loss on a batch of images. Must return a dict with ``"loss"``."""
        raise NotImplementedError

    def embed(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, D)`` features for evaluation (EMA target encoder, pooled)."""
        raise NotImplementedError

    @property
    def embed_dim(self) -> int:
        """Width ``D`` of :meth:`embed`'s output."""
        raise NotImplementedError

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, target)`` module pairs updated by the EMA callback."""
        return [(self.context_encoder, self.target_encoder)]

    # ---------------------------------------------------------------- mask RNG
    @property
    def mask_generator(self) -> torch.Generator:
        """CPU generator for masks, seeded per rank and saved in checkpoints."""
        if self._mask_generator is None:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            self._mask_generator = torch.Generator().manual_seed(self.mask_seed + rank)
            if self._pending_generator_state is not None:
                self._mask_generator.set_state(self._pending_generator_state)
                self._pending_generator_state = None
        return self._mask_generator

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_finite_parameters()
        checkpoint["mask_generator_state"] = self.mask_generator.get_state()
        checkpoint["last_finite_loss"] = self._last_finite_loss

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._last_finite_loss = checkpoint.get("last_finite_loss", float("nan"))
        state = checkpoint.get("mask_generator_state")
        if state is not None:
            self._pending_generator_state = state
            self._mask_generator = None

    # ---------------------------------------------------------------- Lightning plumbing
    def setup(self, stage: str) -> None:
        """Sync masked BatchNorm under ``Trainer(sync_batchnorm=True)``; check the batch size.

        Lightning's ``sync_batchnorm`` converts only ``_BatchNorm`` subclasses (here: the
        predictor's); :class:`MaskedBatchNorm2d` layers — context and target encoder — get
        ``sync = True`` and all-reduce their statistics themselves.
        """
        trainer = self.trainer
        # NOTE: ``_layer_sync`` is how Lightning's parallel strategies hold sync_batchnorm.
        sync = stage == "fit" and getattr(trainer.strategy, "_layer_sync", None) is not None
        if sync:
            for module in self.modules():
                if isinstance(module, MaskedBatchNorm2d):
                    module.sync = True
        batch_size = getattr(trainer.datamodule, "batch_size", None)
        too_small = stage == "fit" and isinstance(batch_size, int) and batch_size < 2
        norms = (MaskedBatchNorm2d, nn.modules.batchnorm._BatchNorm)
        has_bn = any(isinstance(m, norms) for m in self.modules())
        if too_small and has_bn and not (sync and trainer.world_size > 1):
            raise ValueError(
                f"data.init_args.batch_size={batch_size} is too small: BatchNorm in training "
                "mode needs at least 2 images per device to compute batch statistics. Use "
                "batch_size >= 2 (tens of images per device are usual), or sync_batchnorm=True "
                "with several devices."
            )

    @staticmethod
    def split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
        """``images`` or ``(images, labels, ...)`` -> ``(images, labels | None)``.

        ``images`` may be a list of augmented views (``SSLDataModule(num_views=2)``):
        single-view methods get the first; multi-view methods (C-JEPA) override this.
        """
        if isinstance(batch, Tensor):
            return batch, None
        images = batch[0]
        if isinstance(images, (list, tuple)):  # several views of the same images: the first
            images = images[0]
        return images, (batch[1] if len(batch) > 1 else None)

    @staticmethod
    def stack_views(batch: Any) -> tuple[Tensor, Tensor | None]:
        """Like :meth:`split_batch`, for multi-view methods: several views come stacked
        ``(B, V, 3, H, W)``; a single view stays ``(B, 3, H, W)``."""
        if isinstance(batch, Tensor):
            return batch, None
        images = batch[0]
        if isinstance(images, (list, tuple)):
            images = torch.stack(list(images), dim=1)  # (B, V, 3, H, W)
        return images, (batch[1] if len(batch) > 1 else None)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        images, _ = self.split_batch(batch)
        out = self.shared_step(images)
        self._check_finite(out["loss"])
        self._log_scalars("train", out, images.shape[0])
        return out

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, _ = self.split_batch(batch)
        out = self.shared_step(images)
        self._log_scalars("val", out, images.shape[0])

    def on_validation_epoch_start(self) -> None:
        # Same masks every validation epoch so the validation loss is comparable over time.
        self._train_generator_state = self.mask_generator.get_state()
        self.mask_generator.manual_seed(self.mask_seed + 10_000)

    def on_validation_epoch_end(self) -> None:
        self.mask_generator.set_state(self._train_generator_state)

    def _log_scalars(self, stage: str, out: dict[str, Tensor], batch_size: int) -> None:
        for key, value in out.items():
            if value.ndim == 0:
                self.log(
                    f"{stage}/{key}",
                    value.detach(),
                    on_step=stage == "train",
                    on_epoch=True,
                    prog_bar=key == "loss",
                    batch_size=batch_size,
                    sync_dist=stage == "val",
                )

    def _check_finite(self, loss: Tensor) -> None:
        n = self.nan_check_every_n_steps
        if n <= 0 or self.global_step % n:
            return
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"Loss is {value} at step {self.global_step} (last finite loss: "
                f"{self._last_finite_loss:.6g}). Likely causes: learning rate too high for the "
                "batch size, fp16 overflow (use bf16-mixed), or corrupt input. The last saved "
                "checkpoint is kept; lower optimizer.init_args.lr or enable gradient clipping."
            )
        self._last_finite_loss = value

    def _check_finite_parameters(self) -> None:
        """Refuse to save weights that could not be resumed (one host sync per checkpoint)."""
        named = [(n, p) for n, p in self.named_parameters() if p.is_floating_point()]
        if not named:
            return
        finite = torch.stack([torch.isfinite(p).all() for _, p in named]).tolist()
        bad = [n for (n, _), ok in zip(named, finite, strict=True) if not ok]
        if bad:
            raise FloatingPointError(
                f"Parameters are not finite at step {self.global_step} ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}): not saving this checkpoint; the last one "
                "on disk is kept. Likely causes: learning rate too high, fp16 overflow (use "
                "bf16-mixed), or corrupt input; lower the lr or enable gradient clipping."
            )

    def configure_callbacks(self) -> list[Callback]:
        """Add an EMA schedule from ``ema_start``/``ema_end`` unless the trainer has one."""
        if any(isinstance(cb, EMAMomentumSchedule) for cb in self.trainer.callbacks):
            return []
        return [EMAMomentumSchedule(self.ema_start, self.ema_end, self.ema_schedule)]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters, split into weight-decayed and not (bias, norms, tokens)."""
        target_ids = {id(p) for _, t in self.ema_pairs() for p in t.parameters()}
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad or id(p) in target_ids:
                continue
            (no_decay if p.ndim <= 1 or name.endswith("token") else decay).append(p)
        return [
            {"params": decay, "name": "decay"},
            {"params": no_decay, "name": "no_decay", "weight_decay": 0.0},
        ]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        for group in optimizer.param_groups:
            group["initial_weight_decay"] = group["weight_decay"]
        trainer = self.trainer
        total = int(trainer.estimated_stepping_batches)
        if trainer.train_dataloader is None:  # max_steps without max_epochs: not loaded yet
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches  # per epoch, after limit_train_batches
        accumulate = trainer.accumulate_grad_batches
        steps_per_epoch = math.ceil(batches / accumulate) if math.isfinite(batches) else total
        warmup = round(self.warmup_epochs * steps_per_epoch)

        def factor(step: int) -> float:
            return warmup_cosine(
                step, total, warmup, self.warmup_start_lr_ratio, 1.0, self.final_lr_ratio
            )

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
        }

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Masks are a pure function of (mask_seed, rank, epoch, batch): exact after resuming
        # (also mid-epoch and under DDP) and unaffected by callbacks that draw masks.
        self.mask_generator.manual_seed(
            derive_seed(MASKS, self.mask_seed, self.global_rank, self.current_epoch, batch_idx)
        )
        if self.final_weight_decay is None:
            return
        total = int(self.trainer.estimated_stepping_batches)
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                start = group.get("initial_weight_decay", 0.0)
                if start > 0:
                    group["weight_decay"] = warmup_cosine(
                        self.global_step, total, 0, start, start, self.final_weight_decay
                    )
