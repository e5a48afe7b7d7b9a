"""Loss functions (pure functions and thin ``nn.Module`` wrappers)."""

from jepa_lightning.losses.jepa import NormalizedSmoothL1Loss, normalized_smooth_l1

__all__ = ["NormalizedSmoothL1Loss", "normalized_smooth_l1"]
