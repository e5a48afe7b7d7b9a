"""Loss functions (pure functions and thin ``nn.Module`` wrappers)."""

from jepa_lightning.losses.ijepa import IJEPALoss, ijepa_loss, layer_norm_targets
from jepa_lightning.losses.jepa import (
    NormalizedSmoothL1Loss,
    TargetNorm,
    normalize_targets,
    normalized_smooth_l1,
)
from jepa_lightning.losses.vicreg import (
    VICRegOutput,
    VICRegTerms,
    covariance_term,
    gather_batch,
    invariance_term,
    variance_term,
)

__all__ = [
    "IJEPALoss",
    "NormalizedSmoothL1Loss",
    "TargetNorm",
    "VICRegOutput",
    "VICRegTerms",
    "covariance_term",
    "gather_batch",
    "ijepa_loss",
    "invariance_term",
    "layer_norm_targets",
    "normalize_targets",
    "normalized_smooth_l1",
    "variance_term",
]
