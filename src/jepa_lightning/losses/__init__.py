"""Loss functions (pure functions and thin ``nn.Module`` wrappers)."""

from jepa_lightning.losses.ijepa import ijepa_loss, layer_norm_targets
from jepa_lightning.losses.jepa import TargetNorm, normalize_targets, normalized_smooth_l1
from jepa_lightning.losses.regularizer import Regularizer, RegularizerOutput, gather_batch
from jepa_lightning.losses.sigreg import SIGRegOutput, SIGRegTerms
from jepa_lightning.losses.vicreg import VICRegOutput, VICRegTerms
from jepa_lightning.losses.visreg import VISRegOutput, VISRegTerms

__all__ = [
    "Regularizer",
    "RegularizerOutput",
    "SIGRegOutput",
    "SIGRegTerms",
    "TargetNorm",
    "VICRegOutput",
    "VICRegTerms",
    "VISRegOutput",
    "VISRegTerms",
    "gather_batch",
    "ijepa_loss",
    "layer_norm_targets",
    "normalize_targets",
    "normalized_smooth_l1",
]
