"""EMA momentum schedule for the target encoder(s) of any JEPA module."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from jepa_lightning.schedules import ScheduleKind, momentum_schedule


@torch.no_grad()
def ema_update(online: torch.nn.Module, target: torch.nn.Module, momentum: float) -> None:
    """``target ← m · target + (1 − m) · online`` for every parameter.

    Same maths as ``lightly.models.utils.update_momentum``, fused over all parameters with
    ``torch._foreach_lerp_`` (one kernel launch per group instead of one per tensor).
    Buffers (BN running statistics) are not averaged: the target keeps its own.
    """
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError("online and target modules have different parameter lists")
    if t_params:
        torch._foreach_lerp_(t_params, o_params, 1.0 - momentum)


class EMAMomentumSchedule(Callback):
    """Updates every ``(online, target)`` pair the module's ``ema_pairs()`` declares after each
    optimiser step, with a momentum that is a pure function of ``trainer.global_step`` and
    ``trainer.estimated_stepping_batches`` — correct after resuming and with gradient
    accumulation (it updates once per optimiser step, not per micro-batch).

    Args:
        start: Momentum at the first step (paper: 0.996).
        end: Momentum at the last step (paper: 1.0).
        schedule: ``cosine`` (CNN-JEPA), ``linear`` (I-JEPA reference) or ``constant``.

    Example:
        >>> import lightning.pytorch as pl
        >>> from jepa_lightning import EMAMomentumSchedule
        >>> ema = EMAMomentumSchedule(start=0.996, end=1.0, schedule="linear")  # I-JEPA's ramp
        >>> trainer = pl.Trainer(callbacks=[ema], accelerator="cpu", logger=False)
    """

    def __init__(
        self, start: float = 0.996, end: float = 1.0, schedule: ScheduleKind = "cosine"
    ) -> None:
        if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
            raise ValueError(f"EMA momentum must lie in [0, 1], got start={start}, end={end}")
        self.start = start
        self.end = end
        self.schedule = schedule
        self._last_step = -1

    def momentum(self, step: int, total_steps: int) -> float:
        return momentum_schedule(step, total_steps, self.start, self.end, self.schedule)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step  # number of optimiser steps taken so far
        if step == self._last_step or step == 0:
            return  # accumulating gradients: no optimiser step happened in this micro-batch
        self._last_step = step
        m = self.momentum(step - 1, int(trainer.estimated_stepping_batches))
        for online, target in pl_module.ema_pairs():  # type: ignore[operator]
            ema_update(online, target, m)
        pl_module.log("train/ema_momentum", m, on_step=True, on_epoch=False)
