"""End-to-end fine-tuning of a pretrained encoder with a linear classification head."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from jepa_lightning.data.batch import split_batch
from jepa_lightning.evaluation.pretrained import (
    EncoderChoice,
    EvaluationModule,
    MethodSpec,
    accuracy_metrics,
)
from jepa_lightning.methods.base import JEPAModule
from jepa_lightning.methods.optim import warmup_cosine_lr


class FineTune(EvaluationModule):
    """Fine-tune the pretrained encoder (EMA target by default) end to end with a linear head.

    The features are the method's own :meth:`~JEPAModule.features` (the encoder,
    average-pooled, with gradients; what ``embed`` computes without them); only the chosen
    encoder is trained (the predictor and the other encoder stay frozen and unused). Training
    images come from the DataModule's ``train_dataloader`` — for the shipped DataModules
    RandomResizedCrop + horizontal flip, i.e. the standard supervised augmentation
    (``crop_scale``/``hflip`` are DataModule options) — with their labels; validation uses
    ``val_dataloader`` (resize, centre crop).
    Logs ``train/loss``, ``val/loss``, ``val/top1`` and ``val/top5``.

    Learning rates: ``lr`` for the head, ``backbone_lr`` for the encoder (per parameter group;
    the optimiser's own ``lr`` is overridden), both with linear warm-up and per-step cosine
    decay. Weight decay is the optimiser's, not applied to biases and norm parameters.

    Args:
        checkpoint: Pretraining checkpoint; ``None`` = randomly initialised ``method``
            (supervised training from scratch, the baseline).
        method: ``{class_path, init_args}`` of the method (see :class:`EvaluationModule`).
        encoder: ``target`` (EMA, default) or ``context``.
        image_size: Image side produced by the DataModule (linked by the CLI).
        num_classes: Number of classes; ``None`` reads the DataModule's.
        optimizer: Optimiser factory (AdamW by default; set ``weight_decay`` in the config).
        lr: Peak learning rate of the classification head.
        backbone_lr: Peak learning rate of the encoder (0 freezes it: a linear probe trained on
            augmented images).
        warmup_epochs: Linear warm-up length in epochs (fractions allowed).
        label_smoothing: Label smoothing of the cross-entropy.

    Example:
        >>> import torch
        >>> from jepa_lightning import FineTune
        >>> spec = {"class_path": "jepa_lightning.CNNJEPA",
        ...         "init_args": {"backbone": "resnet18", "small_images": True}}
        >>> model = FineTune(method=spec, image_size=32, num_classes=10)
        >>> logits = model(torch.randn(2, 3, 32, 32))  # (B, num_classes), with gradients
        >>> logits.shape, logits.requires_grad
        (torch.Size([2, 10]), True)
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        method: MethodSpec | JEPAModule | None = None,
        encoder: EncoderChoice = "target",
        image_size: int = 224,
        num_classes: int | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr: float = 1e-3,
        backbone_lr: float = 1e-4,
        warmup_epochs: float = 1.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(checkpoint, method, encoder, image_size)
        self.pretrained.requires_grad_(False)
        self.encoder.requires_grad_(backbone_lr > 0)
        if backbone_lr > 0:  # fine-tuning uses batch statistics (the method loads in eval mode)
            self.pretrained.train()
        self.optimizer_factory = optimizer
        self.lr = lr
        self.backbone_lr = backbone_lr
        self.warmup_epochs = warmup_epochs
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes
        self.head: nn.Linear | None = None
        if num_classes is not None:
            self._build_head(num_classes)

    @property
    def encoder(self) -> nn.Module:
        """The encoder being fine-tuned: what ``features`` runs on (see ``use_encoder``)."""
        return self.pretrained.feature_encoder

    def _build_head(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.hparams["num_classes"] = num_classes  # so its checkpoints reload with the head
        self.head = nn.Linear(self.embed_dim, num_classes)
        self.val_acc = accuracy_metrics(num_classes)

    def setup(self, stage: str) -> None:
        super().setup(stage)  # the context encoder's BatchNorm statistics
        if self.head is None:
            self._build_head(self.num_classes_from_data(self.num_classes))

    def features(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, D)``: the method's :meth:`~JEPAModule.features` (what its
        ``embed`` computes without gradients), with gradients."""
        return self.pretrained.features(images)

    def forward(self, images: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> logits ``(B, C)``."""
        assert self.head is not None, "setup() builds the head"
        return self.head(self.features(images))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = split_batch(batch)
        if labels is None:
            raise ValueError("Fine-tuning needs labelled batches (images, labels).")
        loss = F.cross_entropy(self(images), labels, label_smoothing=self.label_smoothing)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = split_batch(batch)
        assert labels is not None
        logits = self(images)  # (B, C)
        n = labels.shape[0]
        self.log("val/loss", F.cross_entropy(logits, labels), batch_size=n, sync_dist=True)
        for name, metric in self.val_acc.items():
            metric(logits, labels)
            self.log(f"val/{name}", metric, batch_size=n, prog_bar=name == "top1")

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Head and encoder parameters, each split into weight-decayed and not (1-D)."""
        assert self.head is not None
        groups = []
        parts = (("head", self.head, self.lr), ("backbone", self.encoder, self.backbone_lr))
        for name, module, lr in parts:
            params = [p for p in module.parameters() if p.requires_grad]
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]
            groups += [
                {"params": decay, "lr": lr, "name": name},
                {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}_no_decay"},
            ]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        return warmup_cosine_lr(self.trainer, optimizer, self.warmup_epochs)
