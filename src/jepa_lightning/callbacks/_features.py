"""Plumbing shared by the monitoring callbacks: embedding a batch once per validation step,
collecting validation features with their dataset indices, gathering them across processes
exactly once, and embedding a labelled split outside Lightning's loops."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from jepa_lightning.data.batch import split_batch

# One cached embedding per module: several callbacks embed the same validation batch in the
# same ``on_validation_batch_end``; the cache holds the batch's image tensor itself, so an
# identity check cannot confuse two batches.
_EMBED_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[Tensor, Tensor]] = (
    weakref.WeakKeyDictionary()
)


def epoch_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """True on epochs 0, n, 2n, ... and on the last epoch of ``max_epochs``."""
    epoch = trainer.current_epoch
    return epoch % max(every_n_epochs, 1) == 0 or epoch + 1 == trainer.max_epochs


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own mode afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def embed(trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor) -> Tensor:
    """``pl_module.embed(images)`` in eval mode under the trainer's precision, as float
    ``(B, D)``; cached for the same image tensor."""
    cached = _EMBED_CACHE.get(pl_module)
    if cached is not None and cached[0] is images:
        return cached[1]
    fn = getattr(pl_module, "embed", None)
    if fn is None:
        raise AttributeError(
            f"{type(pl_module).__name__} has no `embed(images) -> (B, D)` method, which the "
            "monitoring callbacks need (every JEPAModule has one)."
        )
    with eval_mode(pl_module), torch.no_grad(), trainer.precision_plugin.val_step_context():
        features = fn(images).float()  # (B, D)
    _EMBED_CACHE[pl_module] = (images, features)
    return features


def all_gather_cat(pl_module: pl.LightningModule, tensor: Tensor) -> Tensor:
    """Concatenate a tensor's rows across processes (rows may differ in number per rank)."""
    world = pl_module.trainer.world_size
    if world == 1:
        return tensor
    n = torch.tensor([tensor.shape[0]], device=pl_module.device)
    sizes = pl_module.all_gather(n).view(world).tolist()  # (W,)
    pad = tensor.new_zeros((max(sizes) - tensor.shape[0], *tensor.shape[1:]))
    gathered = pl_module.all_gather(torch.cat([tensor, pad]))  # (W, max, ...)
    return torch.cat([gathered[r, : sizes[r]] for r in range(world)])


def gather_unique(
    pl_module: pl.LightningModule, features: Tensor, labels: Tensor, indices: Tensor
) -> tuple[Tensor, Tensor]:
    """Gather ``(features, labels)`` rows from every process, keep one row per dataset index
    (drops the duplicates ``DistributedSampler`` pads with) and sort by index, so every rank
    holds exactly what a single process would, in the same order."""
    features = all_gather_cat(pl_module, features)
    labels = all_gather_cat(pl_module, labels.to(features.device))
    indices = all_gather_cat(pl_module, indices.to(features.device))
    indices, order = torch.sort(indices, stable=True)
    keep = torch.ones_like(indices, dtype=torch.bool)
    keep[1:] = indices[1:] != indices[:-1]
    order = order[keep]
    return features[order], labels[order]


def loader_indices(loader: object) -> list[int] | None:
    """Dataset indices in the order a map-style, unshuffled DataLoader yields them, or
    ``None`` when that order cannot be known in advance."""
    if isinstance(loader, Sequence) and not isinstance(loader, DataLoader):
        loader = loader[0] if loader else None
    if not isinstance(loader, DataLoader) or loader.batch_sampler is None:
        return None
    sampler = loader.sampler
    if isinstance(sampler, torch.utils.data.RandomSampler) or getattr(sampler, "shuffle", False):
        return None
    return [int(i) for batch in loader.batch_sampler for i in batch]


class ValFeatures:
    """Validation features of one epoch (first validation loader only) with labels and
    dataset indices, for a metric that must see the whole, de-duplicated split."""

    def __init__(self) -> None:
        self.active = False
        self._features: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._indices: list[int] | None = None
        self._seen = 0

    def start(self, trainer: pl.Trainer) -> None:
        """Begin an epoch of collection."""
        self.active = True
        self._features, self._labels, self._seen = [], [], 0
        self._indices = loader_indices(trainer.val_dataloaders)
        if self._indices is None and trainer.world_size > 1:
            rank_zero_warn(
                "Validation sample indices are unknown (shuffled or iterable loader): samples "
                "the DistributedSampler pads with are counted twice in the monitors' metrics."
            )

    def add(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, dataloader_idx: int
    ) -> None:
        """Embed and store one validation batch."""
        if not self.active or dataloader_idx != 0:
            return
        images, labels = split_batch(batch)
        features = embed(trainer, pl_module, images)
        self._features.append(features)
        if labels is None:
            labels = torch.full((features.shape[0],), -1, dtype=torch.long)
        self._labels.append(labels.to(features.device).long())
        self._seen += features.shape[0]

    def finish(self, pl_module: pl.LightningModule) -> tuple[Tensor, Tensor] | None:
        """All processes' features ``(N, D)`` and labels ``(N,)``, one row per sample
        (collective: every rank must call it); ``None`` if nothing was collected."""
        self.active = False
        count = torch.tensor([float(self._seen)], device=pl_module.device)
        if float(all_gather_cat(pl_module, count).sum()) == 0:
            return None
        dim = int(getattr(pl_module, "embed_dim", 0))
        features = (
            torch.cat(self._features)
            if self._features
            else torch.zeros((0, dim), device=pl_module.device)
        )
        labels = torch.cat(self._labels) if self._labels else torch.zeros(0, dtype=torch.long)
        self._features, self._labels = [], []
        if self._indices is not None and len(self._indices) >= self._seen:
            indices = torch.tensor(self._indices[: self._seen])
        else:  # unknown order: unique per rank, duplicates kept
            rank, world = pl_module.trainer.global_rank, pl_module.trainer.world_size
            indices = torch.arange(self._seen) * world + rank
        return gather_unique(pl_module, features, labels.to(features.device), indices)


class ValFeaturesMonitor(Callback):
    """Base of the monitors that embed the whole validation split on epochs ``0, n, 2n, ...``
    and the last (``every_n_epochs = n``): ``self._val`` collects the features of every
    validation batch of a due epoch; subclasses read them in ``on_validation_epoch_end``."""

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = every_n_epochs
        self._val = ValFeatures()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and epoch_due(trainer, self.every_n_epochs):
            self._val.start(trainer)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._val.add(trainer, pl_module, batch, dataloader_idx)


def embed_dataset(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    dataset: Dataset,
    indices: Tensor,
    template: DataLoader,
) -> tuple[Tensor, Tensor]:
    """Embed ``dataset[indices]`` once across all processes (each rank a strided shard, no
    DistributedSampler, so no padding) and gather. Returns features ``(N, D)`` and labels
    ``(N,)`` ordered by ``indices`` on every rank. ``template`` supplies batch size, workers
    and collate function. Uses its own RNG, so training randomness is untouched."""
    rank, world = trainer.global_rank, trainer.world_size
    shard = indices[rank::world]
    loader = DataLoader(
        Subset(dataset, shard.tolist()),
        batch_size=template.batch_size or 1,
        shuffle=False,
        num_workers=template.num_workers,
        collate_fn=template.collate_fn,
        pin_memory=template.pin_memory,
        worker_init_fn=template.worker_init_fn,
        generator=torch.Generator().manual_seed(0),
    )
    features, labels = [], []
    for batch in loader:
        images, batch_labels = split_batch(batch)
        if batch_labels is None:
            raise ValueError("the k-NN bank loader must yield (images, labels) batches")
        images = images.to(pl_module.device, non_blocking=True)
        features.append(embed(trainer, pl_module, images))
        labels.append(torch.as_tensor(batch_labels).to(pl_module.device).long())
    feats = torch.cat(features) if features else torch.zeros((0, 0), device=pl_module.device)
    labs = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    if world > 1 and not features:  # keep shapes consistent for the gather
        feats = torch.zeros((0, int(getattr(pl_module, "embed_dim", 0))), device=pl_module.device)
    # position in `indices` as the sort key -> same order as a single process
    positions = torch.arange(len(indices))[rank::world]
    return gather_unique(pl_module, feats, labs.to(feats.device), positions)
