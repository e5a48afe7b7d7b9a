"""A tiny CNN-JEPA fit on the embedded digits for the reliability tests, run as a subprocess.

Lightning's ``strategy="ddp"`` re-launches ``sys.argv`` for ranks > 0, and a crash test needs a
process to kill, hence a script. Every rank appends one JSON line per training step to
``OUT/records_<tag>_rank<r>.jsonl`` and writes a digest of its final weights.

    python tiny_fit.py OUT --tag full --max-epochs 2 --limit-train-batches 4 --ckpt-every 3
    python tiny_fit.py OUT --tag crash ... --kill-at-step 3      # SIGKILL after that checkpoint
    python tiny_fit.py OUT --tag resume ... --resume OUT/ckpt/last.ckpt
    python tiny_fit.py OUT --tag ddp --devices 2 --sync-bn --monitors --dump-step0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins import TorchSyncBatchNorm
from torch import nn

from jepa_lightning import (
    CNNJEPA,
    DigitsDataModule,
    EMAMomentumSchedule,
    KNNMonitor,
    OnlineLinearProbe,
)
from jepa_lightning.masking import GridMasks


class RecordingCNNJEPA(CNNJEPA):
    """Keeps the last masks drawn, for the recorder."""

    last_masks: GridMasks | None = None

    def sample_masks(self, batch_size: int) -> GridMasks:
        self.last_masks = super().sample_masks(batch_size)
        return self.last_masks


class MaskedBNOnlySync(TorchSyncBatchNorm):
    """``sync_batchnorm`` for CPU tests: torch's ``SyncBatchNorm`` (what Lightning makes of the
    predictor's BatchNorm) runs only on GPUs, so leave plain BN alone; the JEPA module still
    sees a layer-sync plugin and syncs its masked BN layers."""

    def apply(self, model: Any) -> Any:
        return model


class Recorder(Callback):
    """One JSON line per training step: counters, loss, lr, EMA momentum, data and masks."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        images, labels = batch
        momentum = trainer.callback_metrics.get("train/ema_momentum")
        target = torch.cat(
            [p.detach().double().flatten() for p in pl_module.target_encoder.parameters()]
        )
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "loss": float(outputs["loss"]),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "momentum": None if momentum is None else float(momentum),
            "target_sum": float(target.sum()),
            "images": images.double().flatten(1).sum(1).tolist(),  # per-sample fingerprints
            "labels": labels.tolist(),
            "mask_target": pl_module.last_masks.target.flatten(1).int().tolist(),
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class KillingCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that SIGKILLs its own process right after saving at ``kill_at``."""

    def __init__(self, kill_at: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kill_at = kill_at

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        if trainer.global_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


class Step0Dump(Callback):
    """Saves rank 0's initial context encoder, and each rank's step-0 context-encoder input,
    mask and output, to compare synced masked BN with one process on the global batch."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.global_rank == 0:
            torch.save(pl_module.context_encoder.state_dict(), self.out / "init_context.pt")
        rank = trainer.global_rank

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if module.training and trainer.global_step == 0 and len(args) == 2:
                dump = {"images": args[0], "mask": args[1], "output": output.detach()}
                torch.save(dump, self.out / f"step0_rank{rank}.pt")
                handle.remove()

        handle = pl_module.context_encoder.register_forward_hook(hook)


def digest(module: nn.Module) -> dict[str, str]:
    return {
        k: hashlib.sha1(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        for k, v in module.state_dict().items()
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--tag", default="run")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-epochs", type=int, default=1)
    ap.add_argument("--limit-train-batches", type=int, default=4)
    ap.add_argument("--limit-val-batches", type=int, default=0)
    ap.add_argument("--ckpt-every", type=int, default=0)
    ap.add_argument("--kill-at-step", type=int, default=-1)
    ap.add_argument("--resume", default=None)
    ap.add_argument("--sync-bn", action="store_true")
    ap.add_argument("--monitors", action="store_true")
    ap.add_argument("--dump-step0", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(1)  # 2 shared cores: one thread per process spins least
    pl.seed_everything(0, verbose=False)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = RecordingCNNJEPA(
        backbone="resnet18", small_images=True, image_size=32, warmup_epochs=0.5, ema_start=0.99
    )
    data = DigitsDataModule(image_size=32, batch_size=args.batch_size, num_workers=0)
    callbacks: list[Callback] = [EMAMomentumSchedule(0.99, 1.0)]  # before the recorder
    if args.monitors:
        callbacks += [OnlineLinearProbe(lr=0.01), KNNMonitor(k=10, max_bank_size=64)]
    if args.dump_step0:
        callbacks.append(Step0Dump(out))
    rank = os.environ.get("LOCAL_RANK", "0")
    callbacks.append(Recorder(out / f"records_{args.tag}_rank{rank}.jsonl"))
    if args.ckpt_every:
        ckpt_kwargs = {
            "dirpath": out / "ckpt",
            "every_n_train_steps": args.ckpt_every,
            "save_last": True,
        }
        ckpt = KillingCheckpoint(args.kill_at_step, **ckpt_kwargs)
        callbacks.append(ckpt)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        plugins=[MaskedBNOnlySync()] if args.sync_bn else None,
        max_epochs=args.max_epochs,
        limit_train_batches=args.limit_train_batches,
        limit_val_batches=args.limit_val_batches,
        num_sanity_val_steps=0,
        deterministic=True,
        logger=False,
        enable_checkpointing=bool(args.ckpt_every),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        log_every_n_steps=1,
        callbacks=callbacks,
    )
    trainer.fit(model, datamodule=data, ckpt_path=args.resume)
    synced = [m.sync for m in model.modules() if hasattr(m, "sync")]
    result = {"digest": digest(model), "global_step": trainer.global_step, "synced": synced}
    (out / f"final_{args.tag}_rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
