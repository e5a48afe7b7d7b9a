"""Weighted k-NN accuracy of the module's evaluation features, during pretraining."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from jepa_lightning.callbacks._features import ValFeaturesMonitor, embed_dataset
from jepa_lightning.callbacks.metrics import knn_accuracy

log = logging.getLogger(__name__)


class KNNMonitor(ValFeaturesMonitor):
    """k-NN classification accuracy of ``pl_module.embed`` (for JEPAs: the EMA target encoder,
    average-pooled), the CNN-JEPA paper's protocol: cosine similarity, ``k = 200`` neighbours
    voting with weight ``exp(sim / τ)``, ``τ = 0.1``. Logs ``knn/top1`` and ``knn/top5``.

    Every ``every_n_epochs`` validation epochs it embeds the validation split (collected batch
    by batch in ``on_validation_batch_end``) and a labelled bank: the training split with the
    clean evaluation transform (``trainer.datamodule.train_eval_dataloader()``), optionally a
    fixed random subset of ``max_bank_size`` images. Under DDP each rank embeds a strided shard
    of the bank with a plain (non-distributed) loader and the shards are gathered once;
    validation features are gathered with their dataset indices and de-duplicated (the
    ``DistributedSampler`` pads ranks with repeated samples), so every rank computes what one
    process would. The accuracy counts the validation batches Lightning ran
    (``limit_val_batches`` applies); under ``fast_dev_run=n`` the bank is cut to ``n``
    batches per process too.

    Memory: the bank stays on the module's device, ``N × D`` floats (e.g. 1.28 M × 2048 ×
    4 B ≈ 10 GB for ImageNet-1k with ResNet-50: set ``max_bank_size``), plus the validation
    features ``Q × D``; the similarity search works on ``query_chunk × (k + bank_chunk)``
    similarities at a time, peaking at about 28 bytes each (float similarities, int64
    indices and their sorted copies: ≈ 0.5 GB at the defaults), never ``Q × N``.

    Args:
        k: Number of neighbours (clipped to the bank size).
        temperature: Temperature ``τ`` of the vote weights.
        every_n_epochs: Run on epochs ``0, n, 2n, ...`` and the last one (``max_epochs``).
        max_bank_size: Use a fixed random subset of this many training images as the bank;
            ``None`` uses the whole training split.
        num_classes: Number of classes; ``None`` reads ``trainer.datamodule.num_classes``
            (or infers it from the labels).
        seed: Seed of the bank subset.
        query_chunk: Validation features compared with the bank at once.
        bank_chunk: Bank features compared at once.

    Example:
        >>> import lightning.pytorch as pl
        >>> from jepa_lightning import KNNMonitor
        >>> monitor = KNNMonitor(k=20, every_n_epochs=5, max_bank_size=10_000)
        >>> trainer = pl.Trainer(callbacks=[monitor], accelerator="cpu", logger=False)
        >>> # trainer.fit(model, datamodule) logs knn/top1 and knn/top5 every 5 epochs
    """

    def __init__(
        self,
        k: int = 200,
        temperature: float = 0.1,
        every_n_epochs: int = 1,
        max_bank_size: int | None = None,
        num_classes: int | None = None,
        seed: int = 0,
        query_chunk: int = 1024,
        bank_chunk: int = 16384,
    ) -> None:
        if k < 1 or temperature <= 0 or every_n_epochs < 1:
            raise ValueError("k and every_n_epochs must be >= 1 and temperature > 0")
        super().__init__(every_n_epochs)
        self.k = k
        self.temperature = temperature
        self.max_bank_size = max_bank_size
        self.num_classes = num_classes
        self.seed = seed
        self.query_chunk = query_chunk
        self.bank_chunk = bank_chunk
        self._warned = False
        self.last_result: dict[str, float] = {}
        """``top1``, ``top5``, ``bank_size``, ``num_queries`` and ``seconds`` of the last run."""

    def _bank_source(self, trainer: pl.Trainer) -> Any:
        dm = trainer.datamodule
        fn = getattr(dm, "train_eval_dataloader", None)
        if fn is None:
            if not self._warned:
                rank_zero_warn(
                    "KNNMonitor needs a DataModule with `train_eval_dataloader()` (the labelled "
                    "training split with the evaluation transform); k-NN is skipped."
                )
                self._warned = True
            return None
        return fn()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._val.active:
            return
        t0 = time.perf_counter()
        val = self._val.finish(pl_module)
        template = self._bank_source(trainer)
        if val is None or template is None:
            return
        queries, query_labels = val
        bank, bank_labels = self.compute_bank(trainer, pl_module, template)
        num_classes = self.num_classes or getattr(trainer.datamodule, "num_classes", None)
        if num_classes is None:  # infer from the labels (identical on every rank)
            num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
        acc = knn_accuracy(
            queries,
            query_labels,
            bank,
            bank_labels,
            num_classes,
            k=self.k,
            temperature=self.temperature,
            topk=(1, 5),
            query_chunk=self.query_chunk,
            bank_chunk=self.bank_chunk,
        )
        seconds = time.perf_counter() - t0
        self.last_result = {
            "top1": acc[1],
            "top5": acc[5],
            "bank_size": float(bank.shape[0]),
            "num_queries": float(queries.shape[0]),
            "seconds": seconds,
        }
        # identical on every rank already; the (exact) mean keeps Lightning's DDP check quiet
        pl_module.log("knn/top1", acc[1], on_epoch=True, sync_dist=True)
        pl_module.log("knn/top5", acc[5], on_epoch=True, sync_dist=True)
        log.info(
            "k-NN: top1 %.4f top5 %.4f (bank %d, queries %d) in %.2f s",
            acc[1],
            acc[5],
            bank.shape[0],
            queries.shape[0],
            seconds,
        )

    def bank_indices(self, size: int) -> Tensor:
        """Dataset indices of the bank: all, or a fixed seeded subset of ``max_bank_size``."""
        if self.max_bank_size is None or self.max_bank_size >= size:
            return torch.arange(size)
        g = torch.Generator().manual_seed(self.seed)
        return torch.randperm(size, generator=g)[: self.max_bank_size].sort().values

    def compute_bank(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, template: Any
    ) -> tuple[Tensor, Tensor]:
        """Embed the bank across processes; features ``(N, D)`` and labels ``(N,)``."""
        dataset = template.dataset
        indices = self.bank_indices(len(dataset))
        if trainer.fast_dev_run:  # a smoke test: n bank batches per process, like other loaders
            n = int(trainer.fast_dev_run) * (template.batch_size or 1) * trainer.world_size
            indices = indices[:n]
        return embed_dataset(trainer, pl_module, dataset, indices, template)
