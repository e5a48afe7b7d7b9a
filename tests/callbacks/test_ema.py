"""EMA target encoder: no gradients, exact update rule, schedule, resume."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from jepa_lightning import CNNJEPA, DigitsDataModule, EMAMomentumSchedule
from jepa_lightning.callbacks import ema_update
from jepa_lightning.schedules import momentum_schedule, warmup_cosine


def test_cosine_and_linear_momentum_formulas() -> None:
    total = 11
    for k in range(total):
        cos = 1.0 - (1.0 - 0.996) * (math.cos(math.pi * k / (total - 1)) + 1) / 2
        assert momentum_schedule(k, total, 0.996, 1.0, "cosine") == pytest.approx(cos)
        lin = 0.996 + 0.004 * k / (total - 1)
        assert momentum_schedule(k, total, 0.996, 1.0, "linear") == pytest.approx(lin)
    assert momentum_schedule(0, total, 0.996, 1.0) == pytest.approx(0.996)
    assert momentum_schedule(total - 1, total, 0.996, 1.0) == pytest.approx(1.0)


def test_warmup_cosine_lr_factor() -> None:
    assert warmup_cosine(0, 100, 10, 0.0, 1.0, 0.0) == 0.0
    assert warmup_cosine(5, 100, 10, 0.0, 1.0, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(10, 100, 10, 0.0, 1.0, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 101, 10, 0.0, 1.0, 0.1) == pytest.approx(0.55)  # cosine midpoint
    # The final value is reached on the last step (index total - 1), not one step after it.
    assert warmup_cosine(99, 100, 10, 0.0, 1.0, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(98, 100, 10, 0.0, 1.0, 0.1) > 0.1
    assert warmup_cosine(100, 100, 10, 0.0, 1.0, 0.1) == pytest.approx(0.1)


def test_ema_update_rule() -> None:
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.clone() for p in target.parameters()]
    ema_update(online, target, 0.9)
    for t0, t, o in zip(before, target.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * o)


class _Recorder(Callback):
    """Records (global_step, momentum, lr) after the EMA callback ran."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        m = float(trainer.callback_metrics["train/ema_momentum"])
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.rows.append((trainer.global_step, m, lr))


def _model() -> CNNJEPA:
    return CNNJEPA(
        backbone="resnet18", small_images=True, image_size=32, predictor_depth=1, warmup_epochs=1
    )


def _trainer(tmp_path: Path, callbacks: list[Callback], **kw: object) -> pl.Trainer:
    args: dict = {
        "accelerator": "cpu",
        "max_epochs": 2,
        "limit_train_batches": 2,
        "limit_val_batches": 0,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        "callbacks": callbacks,
    }
    args.update(kw)
    return pl.Trainer(**args)


class _EMAChecker(Callback):
    """After every step: target == m·target_before + (1 − m)·online, m from the schedule."""

    def __init__(self, ema: EMAMomentumSchedule) -> None:
        self.ema = ema
        self.checked: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
        self.before = {k: v.clone() for k, v in pl_module.target_encoder.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        m = self.ema.momentum(trainer.global_step - 1, int(trainer.estimated_stepping_batches))
        online = dict(pl_module.context_encoder.named_parameters())
        for name, p in pl_module.target_encoder.named_parameters():
            assert p.grad is None and not p.requires_grad
            expected = m * self.before[name] + (1 - m) * online[name].detach()
            torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)
        self.checked.append(m)


def test_target_moves_only_by_scheduled_ema_after_real_steps(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = _model()
    start = {k: v.clone() for k, v in model.target_encoder.named_parameters()}
    ema = EMAMomentumSchedule(0.9, 1.0)  # large steps so the update is visible
    checker = _EMAChecker(ema)
    trainer = _trainer(tmp_path, [ema, checker], max_epochs=1, limit_train_batches=3)
    trainer.fit(model, DigitsDataModule(batch_size=8))
    assert checker.checked == pytest.approx([0.9, 0.95, 1.0])
    moved = sum((p - start[n]).abs().sum() for n, p in model.target_encoder.named_parameters())
    assert moved > 0


def test_momentum_and_lr_continue_exactly_after_resume(tmp_path: Path) -> None:
    pl.seed_everything(0)
    rec_full = _Recorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    trainer = _trainer(tmp_path, [EMAMomentumSchedule(0.99, 1.0), rec_full, ckpt])
    trainer.fit(_model(), DigitsDataModule(batch_size=8))
    assert [r[0] for r in rec_full.rows] == [1, 2, 3, 4]
    first_epoch = sorted((tmp_path / "ckpt").glob("epoch=0*.ckpt"))[0]

    rec_resumed = _Recorder()
    trainer2 = _trainer(tmp_path, [EMAMomentumSchedule(0.99, 1.0), rec_resumed])
    trainer2.fit(_model(), DigitsDataModule(batch_size=8), ckpt_path=first_epoch)
    assert [r[0] for r in rec_resumed.rows] == [3, 4]
    for got, want in zip(rec_resumed.rows, rec_full.rows[2:], strict=True):
        assert got[1] == pytest.approx(want[1], abs=1e-12)  # momentum
        assert got[2] == pytest.approx(want[2], abs=1e-12)  # learning rate
    # The schedule really moves: cosine from 0.99 towards 1.0 over 4 steps.
    ms = [r[1] for r in rec_full.rows]
    assert ms == sorted(ms) and ms[0] == pytest.approx(0.99)


def test_module_adds_its_own_ema_schedule_when_none_configured(tmp_path: Path) -> None:
    model = _model()
    trainer = _trainer(tmp_path, [], max_epochs=1, limit_train_batches=1)
    trainer.fit(model, DigitsDataModule(batch_size=8))
    assert sum(isinstance(c, EMAMomentumSchedule) for c in trainer.callbacks) == 1
