"""Exact resume after SIGKILL, resumable data order, and run-to-run determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from jepa_lightning import CNNJEPA, DigitsDataModule
from jepa_lightning.data import EpochSampler, ResumableDataLoader, SeededDataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tiny_fit.py"
# 2 epochs of 3 batches of 4 images, one validation batch per epoch.
COMMON = ["--max-epochs", "2", "--limit-train-batches", "3", "--limit-val-batches", "1"]


def _fit(out: Path, tag: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    cmd = [sys.executable, str(SCRIPT), str(out), "--tag", tag, *COMMON, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _records(out: Path, tag: str) -> list[dict[str, Any]]:
    lines = (out / f"records_{tag}_rank0.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch_is_exact(tmp_path: Path) -> None:
    full_dir, crash_dir = tmp_path / "full", tmp_path / "crash"
    done = _fit(full_dir, "full")  # uninterrupted (checkpointing changes nothing numerically)
    assert done.returncode == 0, done.stderr[-3000:]
    # Checkpoints every 2 steps; SIGKILL right after the step-2 one: mid-epoch (batch 2 of 3).
    crashed = _fit(crash_dir, "crash", "--ckpt-every", "2", "--kill-at-step", "2")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    ckpts = sorted(p.name for p in (crash_dir / "ckpt").iterdir())
    assert ckpts == ["epoch=0-step=2.ckpt", "last.ckpt"]
    last = str(crash_dir / "ckpt" / "last.ckpt")
    resumed = _fit(crash_dir, "resume", "--ckpt-every", "2", "--resume", last)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr  # Lightning sees a resumable loader

    full = _records(full_dir, "full")
    crash, resume = _records(crash_dir, "crash"), _records(crash_dir, "resume")
    assert [r["step"] for r in full] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in crash] == [1, 2]
    assert [r["step"] for r in resume] == [3, 4, 5, 6]
    # Bit-for-bit on CPU: loss, learning rate, EMA momentum, EMA target weights, counters
    # (epoch, batch index), the images and labels of every batch, and the masks.
    assert crash + resume == full
    resumed_at = [(r["epoch"], r["batch_idx"]) for r in resume]
    assert resumed_at == [(0, 2), (1, 0), (1, 1), (1, 2)]
    final_full = json.loads((full_dir / "final_full_rank0.json").read_text())
    final_resume = json.loads((crash_dir / "final_resume_rank0.json").read_text())
    assert final_resume["global_step"] == final_full["global_step"] == 6
    # Every parameter and buffer (BN running statistics, EMA target) is identical at the end.
    assert final_resume["digest"] == final_full["digest"]


def _keys(loader: ResumableDataLoader) -> list[list[int]]:
    """Dataset indices of each batch, without loading any image."""
    return [[index for index, _ in batch] for batch in loader.batch_sampler]  # type: ignore[union-attr]


def _loader(n: int, batch_size: int, world: int = 1, rank: int = 0) -> ResumableDataLoader:
    data = SeededDataset(torch.utils.data.TensorDataset(torch.arange(n)))
    sampler = EpochSampler(data, seed=5, num_replicas=world, rank=rank)
    return ResumableDataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=True)


def _state(epoch: int, batches: int) -> dict[str, int]:
    return {"epoch": epoch, "batches": batches, "batch_size": 3, "world_size": 1, "seed": 5}


def test_loader_state_skips_consumed_batches_and_rolls_over_finished_epochs() -> None:
    reference = _loader(20, 3)
    reference.sampler.set_epoch(2)  # type: ignore[attr-defined]
    epoch2 = _keys(reference)
    assert len(epoch2) == 6 and len({i for b in epoch2 for i in b}) == 18

    mid = _loader(20, 3)
    mid.load_state_dict(_state(2, 4))
    assert _keys(mid) == epoch2[4:]  # continues after the 4 consumed batches
    assert len(_keys(mid)) == 6  # only once: the next epoch starts from its beginning
    mid.load_state_dict(_state(2, 4))
    assert len(_keys(mid)) == 6  # loading the same state again is a no-op

    finished = _loader(20, 3)
    finished.load_state_dict(_state(2, 6))
    following = _loader(20, 3)
    following.sampler.set_epoch(3)  # type: ignore[attr-defined]
    assert _keys(finished) == _keys(following)

    # Two ranks with batch 3 consume what one process with batch 6 does, in the same order.
    shards = [_keys(_loader(20, 3, world=2, rank=r)) for r in range(2)]
    single = _keys(_loader(20, 6))
    for t, batch in enumerate(single):
        assert sorted(batch) == sorted(shards[0][t] + shards[1][t])


def test_augmentation_is_a_function_of_seed_epoch_and_index() -> None:
    dm = DigitsDataModule(image_size=32, batch_size=8, seed=3)
    dm.setup()
    loader = dm.train_dataloader()
    key = next(iter(loader.sampler))
    state = torch.get_rng_state()
    a, _ = loader.dataset[key]
    torch.rand(5)  # whatever the global RNG does in between ...
    b, _ = loader.dataset[key]
    assert torch.equal(a, b)  # ... the same crop and flip
    assert not torch.equal(state, torch.get_rng_state())  # only our torch.rand moved it
    x0, _ = next(iter(dm.train_dataloader()))
    x1, _ = next(iter(DigitsDataModule(image_size=32, batch_size=8, seed=3, num_workers=2)
                      .train_dataloader()))  # fmt: skip
    assert torch.equal(x0, x1)  # worker processes do not change the data


class _Linear(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 32 * 32, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0].flatten(1)).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _Positions(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[str, tuple[int, int]]] = []

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self.seen.append(("batch", trainer.datamodule.state_dict()["train_loader"]))

    def on_train_epoch_end(self, trainer: Any, *args: Any) -> None:
        self.seen.append(("epoch_end", trainer.datamodule.state_dict()["train_loader"]))


@pytest.mark.usefixtures("one_thread")
def test_checkpointed_data_position_at_batch_and_epoch_boundaries(tmp_path: Path) -> None:
    data = DigitsDataModule(image_size=32, batch_size=4, seed=1)
    positions = _Positions()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, limit_train_batches=2, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[positions], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(_Linear(), datamodule=data)
    seen = [(where, (s["epoch"], s["batches"])) for where, s in positions.seen]
    assert seen == [
        ("batch", (0, 1)),
        ("batch", (1, 0)),  # the last batch of epoch 0: resume at the start of epoch 1
        ("epoch_end", (1, 0)),
        ("batch", (1, 1)),
        ("batch", (2, 0)),
        ("epoch_end", (2, 0)),
    ]
    after = data.state_dict()["train_loader"]
    assert (after["epoch"], after["batches"], after["seed"]) == (2, 0, 1)  # after fit


class _Losses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, *args: Any) -> None:
        self.losses.append(float(outputs["loss"]))


def _twenty_losses() -> list[float]:
    pl.seed_everything(0, verbose=False)
    model = CNNJEPA(backbone="resnet18", small_images=True, image_size=32, warmup_epochs=0.5)
    data = DigitsDataModule(image_size=32, batch_size=4)
    losses = _Losses()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=10,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[losses],
    )
    trainer.fit(model, datamodule=data)
    return losses.losses


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_same_seed_same_config_same_first_20_losses() -> None:
    first, second = _twenty_losses(), _twenty_losses()
    assert len(first) == 20
    assert first == second  # exactly, on CPU
    assert len(set(first)) == 20  # and they are real, changing losses
