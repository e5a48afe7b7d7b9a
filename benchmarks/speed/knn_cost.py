"""Cost of the k-NN monitor as a fraction of a training epoch, for a shipped config.

Builds the config's model, data, trainer and callbacks through the real CLI (``run=False``),
trains ``--train-batches`` steps of one epoch and lets the config's ``KNNMonitor`` run at the
end of it on a bank of ``--bank-size`` training images (a seeded subset) and ``--val-batches``
validation batches. The timed bank pass and the step times are then scaled to the full
training split and the full validation split:

    per run  = t_bank · N_train / bank + t_val_embed · N_val / val   (embedding dominates)
    epoch    = median step time · steps per epoch
    fraction = per run / epoch, amortised = fraction / every_n_epochs

    python -m benchmarks.speed.knn_cost --config configs/quickstart.yaml
    python -m benchmarks.speed.knn_cost --config configs/cifar10_cnn_jepa_resnet18.yaml \\
        --data ~/.cache/jepa-lightning/cifar10_jpg --bank-size 5120 --train-batches 8
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from typing import Any

import lightning.pytorch as pl
import torch

from jepa_lightning import KNNMonitor
from jepa_lightning.cli import JEPACLI
from jepa_lightning.data.datamodule import SSLDataModule


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.steps: list[float] = []
        self.val_s = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.steps.append(time.perf_counter() - self._t)

    def on_validation_epoch_start(self, *args: Any) -> None:
        self._v = time.perf_counter()

    def on_validation_epoch_end(self, *args: Any) -> None:  # runs before the monitor's hook
        self.val_s = time.perf_counter() - self._v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", default=None, help="ImageFolder root (train/, test/)")
    ap.add_argument("--train-batches", type=int, default=8)
    ap.add_argument("--val-batches", type=int, default=4)
    ap.add_argument("--bank-size", type=int, default=None, help="None = the whole train split")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    overrides = [
        "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.precision", "32", "--trainer.logger.init_args.save_dir", tmp,
        "--trainer.limit_train_batches", str(args.train_batches),
        "--trainer.limit_val_batches", str(args.val_batches),
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", tmp,
    ]  # fmt: skip
    if args.data:  # an ImageFolder tree with train/ and test/ (e.g. ../shared's CIFAR-10 JPEGs)
        overrides += ["--data", "jepa_lightning.ImageFolderDataModule",
                      "--data.init_args.root", args.data, "--data.init_args.val_split", "test",
                      "--data.init_args.num_workers", str(args.workers)]  # fmt: skip
    cli = JEPACLI(pl.LightningModule, SSLDataModule, subclass_mode_model=True,
                  subclass_mode_data=True, args=["--config", args.config, *overrides],
                  run=False)  # fmt: skip
    monitor = next(cb for cb in cli.trainer.callbacks if isinstance(cb, KNNMonitor))
    monitor.max_bank_size = args.bank_size
    timer = StepTimer()
    cli.trainer.callbacks.insert(0, timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    dm = cli.datamodule
    n_train, n_val = len(dm.train_eval), len(dm.val)
    r = monitor.last_result
    bank, queries = r["bank_size"], r["num_queries"]
    bank_full = r["seconds"] * n_train / bank
    # validation features for the monitors: about the per-image cost of the bank pass
    val_full = (r["seconds"] / bank) * n_val
    steps_per_epoch = math.ceil(len(dm.train_ssl) / dm.batch_size)
    step = statistics.median(timer.steps[1:] or timer.steps)
    epoch = step * steps_per_epoch
    per_run = bank_full + val_full
    every = monitor.every_n_epochs
    print(
        f"\n# {args.config}: CPU x{torch.get_num_threads()}, fp32; measured bank {bank:.0f} "
        f"images in {r['seconds']:.1f} s (with the search over {queries:.0f} queries), "
        f"median step {step:.2f} s (batch {dm.batch_size})"
    )
    print(
        "| config | epoch (s) | k-NN run (s) | fraction of an epoch | every_n_epochs | amortised |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.config} | {epoch:.0f} | {per_run:.0f} | {100 * per_run / epoch:.1f} % | "
        f"{every} | {100 * per_run / epoch / every:.1f} % |"
    )


if __name__ == "__main__":
    main()
