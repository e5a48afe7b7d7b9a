"""Schedules as pure functions of the optimisation step (resume-safe by construction)."""

from __future__ import annotations

import math
from typing import Literal

from lightly.utils.scheduler import cosine_schedule

ScheduleKind = Literal["cosine", "linear", "constant"]


def momentum_schedule(
    step: int, total_steps: int, start: float, end: float, kind: ScheduleKind = "cosine"
) -> float:
    """EMA momentum at ``step`` of ``total_steps``: ``start`` at step 0, ``end`` at the last step.

    ``cosine`` is lightly's half-cosine (CNN-JEPA, BYOL); ``linear`` the I-JEPA reference's ramp.
    """
    if kind == "constant" or total_steps <= 1:
        return start if kind == "constant" else end
    step = min(max(step, 0), total_steps - 1)
    if kind == "cosine":
        return cosine_schedule(step, total_steps, start, end)
    if kind == "linear":
        return start + (end - start) * step / (total_steps - 1)
    raise ValueError(f"Unknown schedule kind {kind!r}; use 'cosine', 'linear' or 'constant'.")


def warmup_cosine(
    step: int,
    total_steps: int,
    warmup_steps: int,
    start: float = 0.0,
    peak: float = 1.0,
    end: float = 0.0,
) -> float:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup_steps``, then a cosine that reaches
    ``end`` exactly at the last step (``total_steps - 1``): a run cut to any length still ends
    on its final value."""
    if step < warmup_steps:
        return start + (peak - start) * step / max(1, warmup_steps)
    decay_steps = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
