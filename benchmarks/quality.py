"""Representation quality on CIFAR-10 at equal wall-clock: CNN-JEPA vs BYOL vs random init.

Each method pretrains a ResNet-18 (3×3 stem, no max-pool) for the same wall-clock budget; the
number of optimiser steps is calibrated from a few timed steps first so that the LR/EMA schedules
run to completion inside the budget. Then every encoder (the EMA target encoder for both SSL
methods) is evaluated the same way on clean, centre-cropped images: weighted k-NN (k = 200,
τ = 0.1, cosine; bank = training images) and a linear probe (multinomial logistic regression on
standardised frozen features) on the test split.

    python benchmarks/quality.py --budget-min 30            # data from ../shared is extracted
    python benchmarks/quality.py --data ~/data/cifar10_jpg --budget-min 5 --bank-size 10000
    python benchmarks/quality.py --epochs 100 --precision bf16-mixed --bank-size 50000  # GPU

``--epochs N`` replaces the wall-clock budget by a fixed schedule of N epochs per method (LR
warm-up of ``--warmup-epochs``), for comparison with published CIFAR-10 SSL tables.

Last line, machine-readable: ``knn_top1: cnn_jepa=A byol=B random=C``.
"""

from __future__ import annotations

import argparse
import math
import tarfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightly_baselines import BYOL, TwoViewDataModule
from torch import nn
from torch.utils.data import DataLoader, Subset

from jepa_lightning import CNNJEPA, ImageFolderDataModule
from jepa_lightning.callbacks.metrics import knn_accuracy
from jepa_lightning.losses import VICRegTerms

SHARED_TAR = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpg.tar.gz"
CACHE = Path.home() / ".cache/jepa-lightning"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def cifar_root(data: str | None) -> Path:
    if data:
        return Path(data).expanduser()
    root = CACHE / "cifar10_jpg"
    if not (root / "train").is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED_TAR) as tar:
            tar.extractall(CACHE, filter="data")
    return root


def cifar_datamodule_args(data: str | None, batch_size: int, workers: int) -> dict[str, Any]:
    """``ImageFolderDataModule`` arguments for CIFAR-10 at 32 px (train/test split, no resize)."""
    return dict(
        root=str(cifar_root(data)),
        val_split="test",
        image_size=32,
        batch_size=batch_size,
        num_workers=workers,
        eval_resize_ratio=1.0,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )


class _StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        self.times.append(time.perf_counter() - self._t)


def _trainer(**kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _timed_fit(trainer: pl.Trainer, model: nn.Module, datamodule: pl.LightningDataModule) -> float:
    """``trainer.fit`` and its wall-clock seconds."""
    t0 = time.perf_counter()
    trainer.fit(model, datamodule)  # type: ignore[arg-type]
    return time.perf_counter() - t0


def pretrain_epochs(
    make_model, datamodule: pl.LightningDataModule, epochs: int, **trainer_kwargs: Any
) -> tuple[nn.Module, dict]:  # type: ignore[no-untyped-def]
    """Train for a fixed number of epochs (the GPU comparison of the quality issue)."""
    model = make_model()
    trainer = _trainer(max_epochs=epochs, **trainer_kwargs)
    wall = _timed_fit(trainer, model, datamodule)
    return model, {
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "wall_s": wall,
        "step_s": wall / max(1, trainer.global_step),
    }


def pretrain(
    make_model, datamodule: pl.LightningDataModule, budget_s: float
) -> tuple[nn.Module, dict]:  # type: ignore[no-untyped-def]
    """Calibrate the step time, then train for as many steps as fit in ``budget_s``."""
    timer = _StepTimer()
    probe = _trainer(max_steps=6, callbacks=[timer])
    probe.fit(make_model(), datamodule)
    step_s = sorted(timer.times[2:])[len(timer.times[2:]) // 2]
    steps = max(10, int(0.93 * budget_s / step_s))
    model = make_model()
    trainer = _trainer(max_steps=steps, max_time={"seconds": budget_s})
    wall = _timed_fit(trainer, model, datamodule)
    per_epoch = len(datamodule.train_dataloader())
    return model, {
        "steps": trainer.global_step,
        "epochs": trainer.global_step / per_epoch,
        "wall_s": wall,
        "step_s": step_s,
    }


@torch.no_grad()
def features(encoder: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    encoder.eval()
    device = next(encoder.parameters()).device
    xs, ys = [], []
    for x, y in loader:
        xs.append(encoder(x.to(device)).mean(dim=(2, 3)).float().cpu())  # (B, C) pooled
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def linear_probe(tr: torch.Tensor, ytr: torch.Tensor, te: torch.Tensor, yte: torch.Tensor) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(tr.numpy())
    clf = LogisticRegression(max_iter=1000, C=1.0)
    clf.fit(scaler.transform(tr.numpy()), ytr.numpy())
    return float(clf.score(scaler.transform(te.numpy()), yte.numpy()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=None, help="CIFAR-10 ImageFolder root (train/, test/)")
    ap.add_argument("--budget-min", type=float, default=30.0, help="pretraining minutes each")
    ap.add_argument("--methods", nargs="+", default=["cnn_jepa", "byol", "random"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bank-size", type=int, default=10000, help="k-NN bank / probe train images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vicreg-weight", type=float, default=0.001,
                    help="β_vicreg of cnn_jepa_varcov (C-JEPA: 0.001)")  # fmt: skip
    ap.add_argument("--epochs", type=int, default=None,
                    help="N epochs per method instead of --budget-min")  # fmt: skip
    ap.add_argument("--warmup-epochs", type=float, default=10.0, help="CNN-JEPA warm-up (--epochs)")
    ap.add_argument("--precision", default="32-true", help="Lightning precision (--epochs)")
    ap.add_argument("--limit-train-batches", type=float, default=1.0,
                    help="batches per epoch (a smoke test of --epochs)")  # fmt: skip
    args = ap.parse_args()
    b = args.batch_size
    common = cifar_datamodule_args(args.data, b, args.workers)
    jepa_dm = ImageFolderDataModule(**common)
    jepa_dm.setup()
    budget = args.budget_min * 60

    def make_jepa(**kwargs: Any) -> CNNJEPA:
        # NOTE: lr 0.01 @ 512 (paper) scaled linearly to the batch; no warm-up (a CPU budget is
        # a fraction of an epoch).
        return CNNJEPA(
            backbone="resnet18",
            small_images=True,
            image_size=32,
            optimizer=lambda p: torch.optim.AdamW(p, lr=0.01 * b / 512, weight_decay=0.01),
            warmup_epochs=0.0 if args.epochs is None else args.warmup_epochs,
            ema_start=0.99 if args.epochs is None else 0.996,
            **kwargs,
        )

    g = torch.Generator().manual_seed(args.seed)
    bank_idx = torch.randperm(len(jepa_dm.train_eval), generator=g)[: args.bank_size].tolist()
    bank_loader = DataLoader(
        Subset(jepa_dm.train_eval, bank_idx), batch_size=256, num_workers=args.workers
    )
    test_loader = DataLoader(jepa_dm.val, batch_size=256, num_workers=args.workers)

    def train(make_model, dm: pl.LightningDataModule) -> tuple[nn.Module, dict]:  # type: ignore[no-untyped-def]
        if args.epochs is None:
            return pretrain(make_model, dm, budget)
        return pretrain_epochs(
            make_model, dm, args.epochs,
            precision=args.precision, limit_train_batches=args.limit_train_batches,
        )  # fmt: skip

    rows = []
    for method in args.methods:
        pl.seed_everything(args.seed)
        info = {"steps": 0, "epochs": 0.0, "wall_s": 0.0}
        if method == "cnn_jepa":
            model, info = train(make_jepa, jepa_dm)
            encoder: nn.Module = model.target_encoder
        elif method == "cnn_jepa_varcov":  # + C-JEPA's variance/covariance (one view)
            model, info = train(
                lambda: make_jepa(
                    vicreg=VICRegTerms(sim_weight=0.0), vicreg_weight=args.vicreg_weight
                ),
                jepa_dm,
            )
            encoder = model.target_encoder
        elif method == "byol":
            dm = TwoViewDataModule(views="byol", **common)
            model, info = train(lambda: BYOL(batch_size=b), dm)
            encoder = model.backbone_momentum
        elif method == "random":
            encoder = make_jepa().target_encoder
        else:
            raise ValueError(f"unknown method {method!r}")
        t0 = time.perf_counter()
        fb, lb = features(encoder, bank_loader)
        fq, lq = features(encoder, test_loader)
        knn = knn_accuracy(fq, lq, fb, lb, num_classes=10, k=200, temperature=0.1, topk=(1,))[1]
        lin = linear_probe(fb, lb, fq, lq)
        rows.append((method, info, knn, lin, time.perf_counter() - t0))
        print(f"{method}: {info} knn={knn:.4f} linear={lin:.4f}", flush=True)
    schedule = f"budget {args.budget_min:g} min" if args.epochs is None else f"{args.epochs} epochs"
    print(
        f"\n# CIFAR-10 (JPEG q75), ResNet-18 small stem, 32 px, batch {b}, {schedule} "
        f"each, {torch.get_num_threads()} threads; k-NN bank / probe "
        f"train = {len(bank_idx)} train images, test = {len(jepa_dm.val)}"
    )
    print("| method | steps | epochs | wall (s) | k-NN top-1 | linear top-1 |")
    print("|---|---|---|---|---|---|")
    for method, info, knn, lin, _ in rows:
        print(
            f"| {method} | {info['steps']} | {info['epochs']:.2f} | {info['wall_s']:.0f} | "
            f"{100 * knn:.2f} | {100 * lin:.2f} |"
        )
    knn_by = {m: 100 * k for m, _, k, _, _ in rows}
    core = ("cnn_jepa", "byol", "random")  # always printed (nan if not run), then any others
    names = [*core, *(m for m in knn_by if m not in core)]
    print("knn_top1: " + " ".join(f"{m}={knn_by.get(m, math.nan):.2f}" for m in names))


if __name__ == "__main__":
    main()
