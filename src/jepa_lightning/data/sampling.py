"""A training data pipeline that is reproducible and resumes exactly, also mid-epoch and under DDP.

* :class:`EpochSampler` shuffles with a generator seeded by ``(seed, epoch)``, shards the
  permutation across processes itself (so Lightning keeps it instead of swapping in its own
  ``DistributedSampler``) and yields ``(index, sample_seed)`` keys.
* :class:`SeededDataset` runs the wrapped dataset's ``__getitem__`` — decoding and the random
  augmentation — under ``torch.manual_seed(sample_seed)`` in a forked RNG. An image's crop and
  flip are therefore a pure function of ``(seed, epoch, index)``: the same for any number of
  workers or processes, and the global RNG is left untouched.
* :class:`ResumableDataLoader` tells Lightning where training stands in the epoch (it is
  checkpointed with the fit loop) and, on resume, makes the sampler skip what was consumed.

With DDP, rank ``r`` of ``W`` takes every ``W``-th sample of the epoch's permutation, so the global
batch ``t`` holds the same images as batch ``t`` of one process with a ``W`` times larger batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from jepa_lightning.seeding import DATA_ORDER, DATA_SAMPLE, derive_seed

#: ``() -> (epoch, batches of that epoch already consumed by training)``
Progress = Callable[[], tuple[int, int]]


def train_position(trainer: Any) -> tuple[int, int]:
    """Where a run resumed from a checkpoint saved now continues in the training data:
    ``(epoch, batches of it already consumed)``, from the fit loop's progress counters."""
    epochs = trainer.fit_loop.epoch_progress.current
    if epochs.started == epochs.completed:  # between epochs: the next one starts afresh
        return epochs.completed, 0
    done = trainer.fit_loop.epoch_loop.batch_progress.current.ready  # handed to training_step
    if done >= trainer.num_training_batches:  # e.g. saved at the last batch or at epoch end
        return epochs.completed + 1, 0
    return epochs.completed, done


def warn_if_run_shape_changed(state: dict[str, int], batch_size: int, world_size: int) -> bool:
    """Warn (once, on rank 0) if a run resumes a data position saved with another batch size or
    number of processes; returns whether it did.

    The position is kept in images — nothing is seen twice — but the batches are
    composed differently from the run that wrote the checkpoint, so the continuation is not
    that run's bit for bit.
    """
    old_batch, old_world = state.get("batch_size"), state.get("world_size")
    if old_batch is None or old_world is None or (old_batch, old_world) == (batch_size, world_size):
        return False
    consumed = state.get("batches", 0) * old_batch * old_world
    rank_zero_warn(
        f"Resuming with batch size {batch_size} x {world_size} process(es) where the checkpoint "
        f"was written with {old_batch} x {old_world}: the data position is kept in images "
        f"({consumed} of epoch {state.get('epoch', 0)} consumed; nothing is seen twice), but "
        "batches are composed differently from the interrupted run, so the run "
        "does not continue it bit for bit, and an epoch has another number of steps.",
        category=UserWarning,
    )
    return True


class SeededDataset(Dataset):
    """Wraps a map-style dataset; a key ``(index, seed)`` loads item ``index`` with the global
    torch RNG seeded by ``seed`` (restored afterwards). A plain ``int`` key is passed through."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, tuple):
            index, seed = key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.dataset[index]
        return self.dataset[key]


class EpochSampler(DistributedSampler):
    """Seeded, sharded, resumable shuffling. Yields ``(index, sample_seed)``.

    Each epoch draws a permutation from ``(seed, epoch)``; ``start`` global samples (set by
    :meth:`ResumableDataLoader.load_state_dict`) are skipped once, then rank ``r`` takes
    positions ``r, r + W, ...``. The tail that does not divide by ``W`` is dropped so every rank
    has the same number of samples.

    Args:
        dataset: The dataset to sample from.
        seed: Seed of the order and of the per-sample augmentation seeds.
        num_replicas: Number of processes ``W``.
        rank: This process's global rank.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def __len__(self) -> int:
        return len(self.dataset) // self.num_replicas  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start, self.start = self.epoch, self.start, 0
        g = torch.Generator().manual_seed(derive_seed(DATA_ORDER, self.seed, epoch))
        rest = torch.randperm(len(self.dataset), generator=g)[start:]  # type: ignore[arg-type]
        usable = len(rest) // self.num_replicas * self.num_replicas
        for index in rest[self.rank : usable : self.num_replicas].tolist():
            yield index, derive_seed(DATA_SAMPLE, self.seed, epoch, index)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler` whose position can be saved and restored.

    ``progress`` (set after construction) reports ``(epoch, batches consumed)``; it comes from the
    trainer, not from counting batches here, because Lightning fetches one batch ahead.

    NOTE: Lightning 2.6 restores loader states only if the train loader is built after the
    loops are restored, but ``estimated_stepping_batches`` in ``configure_optimizers`` builds
    it earlier. :class:`~jepa_lightning.data.SSLDataModule` therefore also saves this state
    itself and applies it when it builds the loader; loading the same state twice is a no-op.
    """

    progress: Progress | None = None
    _applied: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        if self.progress is None or not isinstance(sampler, EpochSampler):
            return {}
        epoch, batches = self.progress()
        return {
            "epoch": epoch,
            "batches": batches,
            "batch_size": int(self.batch_size or 1),
            "world_size": sampler.num_replicas,
            "seed": sampler.seed,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        if not state or not isinstance(sampler, EpochSampler) or state == self._applied:
            return
        self._applied = dict(state)
        warn_if_run_shape_changed(state, int(self.batch_size or 1), sampler.num_replicas)
        sampler.seed = state["seed"]
        consumed = state["batches"] * state["batch_size"] * state["world_size"]  # global samples
        size = len(self.dataset)  # type: ignore[arg-type]
        if consumed + sampler.num_replicas * int(self.batch_size or 1) > size:
            sampler.set_epoch(state["epoch"] + 1)  # the epoch was finished
            sampler.start = 0
        else:
            sampler.set_epoch(state["epoch"])
            sampler.start = consumed


def resumable_train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    trainer: Any | None = None,
    state: dict[str, int] | None = None,
    **kwargs: Any,
) -> ResumableDataLoader:
    """The training loader: :class:`EpochSampler` over :class:`SeededDataset`, sharded by the
    trainer's world size and rank, batches of ``batch_size`` (incomplete last batch dropped),
    positioned by a checkpoint's ``state`` if given. ``kwargs`` go to ``DataLoader``."""
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    loader = ResumableDataLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=EpochSampler(dataset, seed, num_replicas=world, rank=rank),
        drop_last=True,
        **kwargs,
    )
    if trainer is not None:
        loader.progress = functools.partial(train_position, trainer)
    if state:
        loader.load_state_dict(state)
    return loader
