"""Shared machinery of every JEPA LightningModule: the training step, EMA pairs, optimiser,
schedules, logging."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from jepa_lightning.callbacks.ema import EMAMomentumSchedule
from jepa_lightning.data.batch import split_batch
from jepa_lightning.methods.checks import check_finite_parameters, setup_batchnorm
from jepa_lightning.methods.optim import cosine_weight_decay, warmup_cosine_lr
from jepa_lightning.methods.regularization import RegularizerSlot
from jepa_lightning.schedules import ScheduleKind
from jepa_lightning.seeding import MASKS, derive_seed

#: Which encoder :meth:`JEPAModule.features` runs: the EMA ``target`` (the papers' evaluation
#: protocol) or the online ``context`` encoder.
EncoderChoice = Literal["target", "context"]


class JEPAModule(RegularizerSlot, pl.LightningModule):
    """Base class of the JEPA methods. It wires, logs and schedules; the maths lives in
    ``nn.Module``s that subclasses build.

    A subclass sets ``self.context_encoder`` and ``self.target_encoder`` (an EMA copy) and
    implements the hooks of one training step; :meth:`shared_step` (not overridable) runs them::

        views -> sample_masks -> forward_masked -> loss (+ regularizer_weight · R) -> outputs

    * :meth:`sample_masks` — masks for a batch, from :attr:`mask_generator`;
    * :meth:`forward_masked` — images ``(V·B, 3, H, W)`` and masks -> the method's forward
      (a named tuple of tensors);
    * :meth:`loss` — the method's own loss: a dict with ``"loss"`` and any other scalars to log;
    * :meth:`pooled_target` — the forward's pooled target features ``(V·B, D)`` (the detached
      ``"embedding"`` output the monitors read);
    * :meth:`regularizer_embeddings` — the ``(B, D)`` branches of the optional regulariser
      (:class:`~jepa_lightning.methods.regularization.RegularizerSlot`);
    * :attr:`num_views` — augmented views per image the loss uses (default 1);
    * :meth:`features` — images -> pooled features ``(B, D)`` of :attr:`feature_encoder`,
      with gradients; :meth:`embed` is its no-grad evaluation wrapper;
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
    #: Convert the batch to channels-last memory format before the forward (CNNs on GPUs).
    channels_last: bool = False
    #: The encoder :meth:`features` uses; see :func:`~jepa_lightning.evaluation.use_encoder`.
    features_from: EncoderChoice = "target"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "shared_step" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} overrides shared_step, which would skip the view checks and "
                "the channels-last conversion: implement sample_masks, forward_masked and loss "
                "(and optionally pooled_target, regularizer_embeddings, num_views) instead."
            )
        if "vicreg_embeddings" in cls.__dict__:
            raise TypeError(f"{cls.__name__}: vicreg_embeddings is now regularizer_embeddings.")

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
        # The anti-collapse regulariser, its weight and projector (set_regularizer).
        self.regularizer = None
        self.regularizer_weight = 0.0
        self.regularizer_projector = None
        self._mask_generator: torch.Generator | None = None
        self._last_finite_loss = float("nan")

    # ---------------------------------------------------------------- hooks for subclasses
    def sample_masks(self, batch_size: int) -> Any:
        """Masks for a batch of ``batch_size`` images, drawn from :attr:`mask_generator`."""
        raise NotImplementedError

    def forward_masked(self, images: Tensor, masks: Any) -> Any:
        """The networks on a batch ``(V·B, 3, H, W)`` (views concatenated) and its masks."""
        raise NotImplementedError

    def loss(self, fwd: Any, masks: Any) -> dict[str, Tensor]:
        """The method's own loss of :meth:`forward_masked`'s output: ``{"loss": ..., ...}``
        (other 0-dim entries are logged)."""
        raise NotImplementedError

    def pooled_target(self, fwd: Any) -> Tensor:
        """``(V·B, D)`` pooled target features of :meth:`forward_masked`'s output."""
        raise NotImplementedError

    def join_views(self, views: list[Tensor]) -> Tensor:
        """The one batch :meth:`forward_masked` gets from ``V × (B, 3, H, W)`` views: by
        default all views concatenated, ``(V·B, 3, H, W)``, each image with its own masks."""
        return torch.cat(views) if len(views) > 1 else views[0]

    def features(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, D)`` pooled float32 features of :attr:`feature_encoder`,
        with gradients (fine-tuning)."""
        raise NotImplementedError

    @property
    def embed_dim(self) -> int:
        """Width ``D`` of :meth:`embed`'s output."""
        raise NotImplementedError

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, target)`` module pairs updated by the EMA callback."""
        return [(self.context_encoder, self.target_encoder)]

    # ---------------------------------------------------------------- the training step
    @property
    def num_views(self) -> int:
        """Augmented views per image the loss uses (stacked ``(B, V, 3, H, W)`` when > 1)."""
        return 1

    def views_hint(self) -> str:
        """What to change instead of adding views, for the "needs two views" error."""
        return ""

    def shared_step(self, images: Tensor) -> dict[str, Tensor]:
        """The loss on a batch: images ``(B, 3, H, W)`` or views ``(B, V, 3, H, W)`` -> a dict
        with ``"loss"``, the scalars to log and the detached ``"embedding"`` ``(B, D)``."""
        views = list(images.unbind(dim=1)) if images.ndim == 5 else [images]  # V × (B, 3, H, W)
        n = self.num_views
        # Evaluation loaders give one view: there the regulariser has no invariance term.
        if len(views) < n and self.training:
            raise ValueError(
                f"{type(self).__name__} uses {n} augmented views per image here, the batch has "
                f"{len(views)}: set data.init_args.num_views: {n}{self.views_hint()}."
            )
        views = views[:n]
        b = views[0].shape[0]
        batch = self.join_views(views)  # default: all views in one pass, (V·B, 3, H, W)
        if self.channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        masks = self.sample_masks(batch.shape[0])
        fwd = self.forward_masked(batch, masks)
        out = self.loss(fwd, masks)
        out["embedding"] = self.pooled_target(fwd)[:b].detach().float()  # (B, D)
        if self.uses_regularizer and b > 1:  # (a last evaluation batch of 1 has no variance)
            self.add_regularizer(out, fwd, masks, len(views))
        return out

    # ---------------------------------------------------------------- features
    @property
    def feature_encoder(self) -> nn.Module:
        """The encoder :meth:`features` runs: the target (default) or the context encoder."""
        return self.context_encoder if self.features_from == "context" else self.target_encoder

    @property
    def exports_to_torchvision(self) -> bool:
        """Whether ``jepa-lightning-export`` can write :attr:`feature_encoder` as a torchvision
        state dict: a capability of the backbone (``exports_to_torchvision = True`` on the
        encoder class, as on :class:`~jepa_lightning.modules.MaskedResNet`), so a new variant
        on such a backbone gets the export (and :class:`~jepa_lightning.FitSummary`'s export
        line) without either naming it."""
        return bool(getattr(self.feature_encoder, "exports_to_torchvision", False))

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, D)`` features for evaluation: :meth:`features` without
        gradients (EMA target encoder, pooled, unless :attr:`features_from` says otherwise)."""
        return self.features(images)

    # ---------------------------------------------------------------- mask RNG
    @property
    def mask_generator(self) -> torch.Generator:
        """CPU generator for masks, seeded per rank. Not saved in checkpoints: every training
        batch reseeds it (:meth:`on_train_batch_start`), every validation epoch too."""
        if self._mask_generator is None:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            self._mask_generator = torch.Generator().manual_seed(self.mask_seed + rank)
        return self._mask_generator

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_finite_parameters(self, self.global_step)
        checkpoint["last_finite_loss"] = self._last_finite_loss

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._last_finite_loss = checkpoint.get("last_finite_loss", float("nan"))

    # ---------------------------------------------------------------- Lightning plumbing
    def setup(self, stage: str) -> None:
        setup_batchnorm(self, self.trainer, stage)  # masked BN sync; batch size >= 2
        self.check_regularizer(stage)  # no projector without a regulariser

    def split_batch(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        """``images`` or ``(images, labels, ...)`` -> ``(images, labels | None)``; several views
        are stacked ``(B, V, 3, H, W)`` when the loss uses them (:attr:`num_views`), else the
        first is taken (see :func:`~jepa_lightning.data.batch.split_batch`)."""
        return split_batch(batch, self.num_views)

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
        # Same masks every validation epoch so the validation loss is comparable over time (the
        # next training batch reseeds the generator, so training masks are unaffected).
        self.mask_generator.manual_seed(self.mask_seed + 10_000)

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
        return warmup_cosine_lr(
            self.trainer,
            optimizer,
            self.warmup_epochs,
            self.warmup_start_lr_ratio,
            self.final_lr_ratio,
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Masks are a pure function of (mask_seed, rank, epoch, batch): exact after resuming
        # (also mid-epoch and under DDP) and unaffected by callbacks that draw masks.
        self.mask_generator.manual_seed(
            derive_seed(MASKS, self.mask_seed, self.global_rank, self.current_epoch, batch_idx)
        )
        if self.final_weight_decay is not None:
            cosine_weight_decay(self.trainer, self.global_step, self.final_weight_decay)
