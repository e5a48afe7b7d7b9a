"""Loss functions (pure functions and thin ``nn.Module`` wrappers)."""

from jepa_lightning.losses.ijepa import ijepa_loss, layer_norm_targets
from jepa_lightning.losses.jepa import TargetNorm, normalize_targets, normalized_smooth_l1
from jepa_lightning.losses.vicreg import VICRegOutput, VICRegTerms, gather_batch

__all__ = [
    "TargetNorm",
    "VICRegOutput",
    "VICRegTerms",
    "gather_batch",
    "ijepa_loss",
    "layer_norm_targets",
    "normalize_targets",
    "normalized_smooth_l1",
]
