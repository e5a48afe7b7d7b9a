"""Test-only callbacks that inject faults into a real ``jepa-lightning fit``
(tests/end_to_end/test_faults.py).

They are given to the CLI with ``--trainer.callbacks+=fault_callbacks.<Name>`` and this folder on
``PYTHONPATH``; every one is a no-op unless its arguments ask for a fault.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


def _rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


class StepRecorder(Callback):
    """Appends ``{step, epoch, batch_idx, loss, lr}`` per training step to
    ``out/steps_<tag>_rank<r>.jsonl`` and writes a digest of every weight and buffer to
    ``out/final_<tag>_rank<r>.json`` when fit ends."""

    def __init__(self, out: str, tag: str) -> None:
        self.out, self.tag = Path(out), tag

    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        (self.out / f"pid_{self.tag}_rank{_rank()}").write_text(str(os.getpid()))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "loss": float(outputs["loss"]),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
        }
        with (self.out / f"steps_{self.tag}_rank{_rank()}.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        digest = {
            k: hashlib.sha1(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for k, v in pl_module.state_dict().items()
        }
        result = {"global_step": trainer.global_step, "digest": digest}
        (self.out / f"final_{self.tag}_rank{_rank()}.json").write_text(json.dumps(result))


class KillAtStep(Callback):
    """SIGKILLs this process when rank ``rank`` starts training step ``step`` (0-based), after
    writing the time of the kill to ``out/killed_rank<r>``."""

    def __init__(self, out: str = ".", step: int = -1, rank: int = 0) -> None:
        self.out, self.step, self.rank = Path(out), step, rank

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and _rank() == self.rank:
            (self.out / f"killed_rank{self.rank}").write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)


class _SlowPickle:
    """Pickles as ``0`` after ``seconds``: holds a checkpoint's write open for that long."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple[type, tuple[int]]:
        time.sleep(self.seconds)
        return int, (0,)


class CheckpointPadding(Callback):
    """Puts ``megabytes`` of extra tensor data in every checkpoint (to make its write slow, or
    large), and with ``slow_step`` holds the write of the checkpoint saved at that global step
    open for ``slow_seconds`` (a kill can then land inside it, whatever the disk's speed).
    Stored under the keys ``fault_padding*``; a resume ignores them."""

    def __init__(self, megabytes: int = 0, slow_step: int = -1, slow_seconds: float = 30.0) -> None:
        self.megabytes, self.slow_step, self.slow_seconds = megabytes, slow_step, slow_seconds

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: Any, checkpoint: Any) -> None:
        if self.megabytes:
            n = self.megabytes * 2**20 // 4
            checkpoint["fault_padding"] = torch.arange(n, dtype=torch.float32)
        if trainer.global_step == self.slow_step:
            checkpoint["fault_padding_slow"] = _SlowPickle(self.slow_seconds)


class FillDisk(Callback):
    """When training step ``step`` starts, fills the filesystem of ``path`` with one file until
    only ``leave_mb`` MB are free (another job's files, say)."""

    def __init__(self, path: str = ".", step: int = -1, leave_mb: int = 8) -> None:
        self.path, self.step, self.leave_mb = Path(path), step, leave_mb

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and _rank() == 0:
            free = shutil.disk_usage(self.path).free - self.leave_mb * 2**20
            with open(self.path / "filler", "wb") as f:
                os.posix_fallocate(f.fileno(), 0, max(free, 1))
