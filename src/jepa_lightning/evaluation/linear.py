"""Offline linear evaluation on frozen, cached features (the CNN-JEPA paper's protocol)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from jepa_lightning.callbacks._features import embed_dataset
from jepa_lightning.callbacks.metrics import knn_accuracy
from jepa_lightning.evaluation.pretrained import (
    EncoderChoice,
    EvaluationModule,
    MethodSpec,
    accuracy_metrics,
)
from jepa_lightning.methods.base import JEPAModule
from jepa_lightning.schedules import warmup_cosine

log = logging.getLogger(__name__)

_LOADERS = ("train_dataloader", "val_dataloader")


class _Shard(DistributedSampler):
    """Indices ``rank, rank + world, ...``: every sample exactly once over all processes
    (``DistributedSampler`` pads with repeats, which would bias the accuracy)."""

    def __init__(self, size: int, rank: int, world: int) -> None:
        self.size, self.rank, self.num_replicas = size, rank, world
        self.shuffle, self.drop_last, self.epoch = False, False, 0

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.num_replicas))


class LinearEvaluation(EvaluationModule):
    """Linear classifier on the frozen pretrained encoder's pooled features.

    The features of the labelled training split and of the validation split are computed
    **once**, with the DataModule's evaluation transform (resize, centre crop; no augmentation),
    at the start of ``fit``; the classifier then trains on the cached features for
    ``max_epochs`` (the paper: 90 epochs of Adam). While this module runs, it replaces the
    DataModule's ``train_dataloader``/``val_dataloader`` by loaders over the cached features (its
    ``train_eval_dataloader`` and ``val_dataloader`` feed the cache) and restores them at
    teardown. Logs ``val/top1``, ``val/top5`` (torchmetrics), ``val/loss``, ``train/loss`` and,
    computed once on the same cached features, the weighted k-NN accuracy ``knn/top1``,
    ``knn/top5`` (k = 200, τ = 0.1, cosine).

    Under DDP each process embeds a shard and the features are gathered; validation visits every
    sample exactly once. Run it with ``jepa-lightning fit --config configs/eval/linear_*.yaml
    --model.init_args.checkpoint PATH``.

    Args:
        checkpoint: Pretraining checkpoint; ``None`` = randomly initialised ``method``.
        method: ``{class_path, init_args}`` of the method (see :class:`EvaluationModule`).
        encoder: ``target`` (EMA, default) or ``context``.
        image_size: Image side produced by the DataModule (linked by the CLI).
        num_classes: Number of classes; ``None`` reads the DataModule's.
        optimizer: Optimiser factory for the classifier (Adam; set ``lr`` in the config).
        batch_size: Batch size of the classifier's training on cached features.
        warmup_epochs: Linear warm-up epochs before the per-epoch cosine decay to 0.
        standardize: Standardise features with the training split's mean and std (fixed,
            so the classifier stays linear in the features).
        knn_k: Neighbours of the k-NN accuracy on the cached features (0 disables it).
        knn_temperature: Temperature of the k-NN vote weights.

    Example:
        >>> import torch
        >>> from jepa_lightning import LinearEvaluation
        >>> spec = {"class_path": "jepa_lightning.CNNJEPA",
        ...         "init_args": {"backbone": "resnet18", "small_images": True}}
        >>> probe = LinearEvaluation(method=spec, image_size=32, num_classes=10)  # random init
        >>> probe.embed(torch.randn(2, 3, 32, 32)).shape  # frozen features of the probe
        torch.Size([2, 512])
        >>> # from a checkpoint: LinearEvaluation(checkpoint="last.ckpt"), then trainer.fit
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        method: MethodSpec | JEPAModule | None = None,
        encoder: EncoderChoice = "target",
        image_size: int = 224,
        num_classes: int | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        batch_size: int = 256,
        warmup_epochs: int = 0,
        standardize: bool = True,
        knn_k: int = 200,
        knn_temperature: float = 0.1,
    ) -> None:
        super().__init__(checkpoint, method, encoder, image_size)
        self.pretrained.requires_grad_(False)
        self.optimizer_factory = optimizer
        self.batch_size = batch_size
        self.warmup_epochs = warmup_epochs
        self.standardize = standardize
        self.knn_k = knn_k
        self.knn_temperature = knn_temperature
        self.num_classes = num_classes
        dim = self.embed_dim
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        self.classifier: nn.Linear | None = None
        if num_classes is not None:
            self._build_head(num_classes)
        self._cache: dict[str, tuple[Tensor, Tensor]] | None = None
        self.knn_result: dict[int, float] = {}
        """k-NN top-1/top-5 on the cached features, ``{1: acc, 5: acc}``."""

    def _build_head(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.hparams["num_classes"] = num_classes  # so its checkpoints reload with the head
        self.classifier = nn.Linear(self.embed_dim, num_classes)
        self.val_acc = accuracy_metrics(num_classes)

    def forward(self, features: Tensor) -> Tensor:
        """Cached (or freshly embedded) features ``(B, D)`` -> logits ``(B, C)``."""
        assert self.classifier is not None, "setup() builds the classifier"
        return self.classifier((features - self.feature_mean) / self.feature_std)

    def predict_images(self, images: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> logits ``(B, C)`` (embeds with the frozen encoder)."""
        return self(self.embed(images))

    # ---------------------------------------------------------------- feature cache
    def setup(self, stage: str) -> None:
        super().setup(stage)  # the context encoder's BatchNorm statistics
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "train_eval_dataloader"):
            raise ValueError(
                "LinearEvaluation needs an SSLDataModule (train_eval_dataloader: the labelled "
                "training split with the evaluation transform; val_dataloader: the validation "
                "split)."
            )
        if self.classifier is None:
            self._build_head(self.num_classes_from_data(self.num_classes))
        self._cache = None  # a new run embeds its own data
        dm.train_dataloader = self._train_features_loader
        dm.val_dataloader = self._val_features_loader

    def teardown(self, stage: str) -> None:
        dm = self.trainer.datamodule
        for name in _LOADERS:  # drop the instance attributes: the class's methods show again
            vars(dm).pop(name, None)

    def _embed_split(self, loader: DataLoader) -> tuple[Tensor, Tensor]:
        indices = torch.arange(len(loader.dataset))  # type: ignore[arg-type]
        fast = int(self.trainer.fast_dev_run)
        if fast:  # a smoke test: n batches per process, like the other loaders
            indices = indices[: fast * (loader.batch_size or 1) * self.trainer.world_size]
        return embed_dataset(self.trainer, self, loader.dataset, indices, loader)

    def cached_features(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{"train": (features, labels), "val": ...}``, embedded on first use only."""
        if self._cache is None:
            dm = self.trainer.datamodule
            t0 = time.perf_counter()
            train = self._embed_split(dm.train_eval_dataloader())
            val = self._embed_split(type(dm).val_dataloader(dm))  # the image loader, not ours
            self._cache = {"train": train, "val": val}
            if self.standardize and self.trainer.state.fn == "fit":
                self.feature_mean.copy_(train[0].mean(dim=0))
                self.feature_std.copy_(train[0].std(dim=0).clamp_min(1e-6))
            if self.knn_k > 0:
                self.knn_result = knn_accuracy(
                    val[0], val[1], train[0], train[1], self.num_classes or 1,
                    k=self.knn_k, temperature=self.knn_temperature, topk=(1, 5),
                )  # fmt: skip
            log.info(
                "Cached features: train %s, val %s in %.1f s; k-NN %s",
                tuple(train[0].shape), tuple(val[0].shape), time.perf_counter() - t0,
                self.knn_result,
            )  # fmt: skip
        return self._cache

    def _train_features_loader(self) -> DataLoader:
        features, labels = self.cached_features()["train"]
        return DataLoader(  # host copies: cheap per-sample indexing; Lightning moves batches
            TensorDataset(features.cpu(), labels.cpu()),
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
        )

    def _val_features_loader(self) -> DataLoader:
        features, labels = self.cached_features()["val"]
        world, rank = self.trainer.world_size, self.trainer.global_rank
        return DataLoader(
            TensorDataset(features.cpu(), labels.cpu()),
            batch_size=max(self.batch_size, 1024),
            sampler=_Shard(len(labels), rank, world),
        )

    # ---------------------------------------------------------------- training
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        features, labels = batch  # (B, D), (B,)
        loss = F.cross_entropy(self(features), labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        features, labels = batch
        logits = self(features)  # (B, C)
        n = labels.shape[0]
        self.log("val/loss", F.cross_entropy(logits, labels), batch_size=n, sync_dist=True)
        for name, metric in self.val_acc.items():
            metric(logits, labels)
            self.log(f"val/{name}", metric, batch_size=n, prog_bar=name == "top1")

    def on_validation_epoch_end(self) -> None:
        for k, acc in self.knn_result.items():  # identical on every rank
            self.log(f"knn/top{k}", acc, sync_dist=True)

    def configure_optimizers(self) -> Any:
        assert self.classifier is not None
        optimizer = self.optimizer_factory(self.classifier.parameters())
        epochs = self.trainer.max_epochs
        total = epochs if epochs is not None and epochs > 0 else None

        def factor(epoch: int) -> float:
            if total is None:
                return 1.0
            # Per epoch, the zero end is the epoch *after* the last: every epoch still learns.
            return warmup_cosine(epoch, total + 1, self.warmup_epochs, 0.0, 1.0, 0.0)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "name": "lr"}}
