"""Lightning callbacks shared by every JEPA module."""

from jepa_lightning.callbacks.ema import EMAMomentumSchedule, ema_update

__all__ = ["EMAMomentumSchedule", "ema_update"]
