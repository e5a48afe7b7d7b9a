"""Lightning callbacks shared by every JEPA module."""

from jepa_lightning.callbacks.collapse import CollapseMonitor
from jepa_lightning.callbacks.ema import EMAMomentumSchedule, ema_update
from jepa_lightning.callbacks.knn import KNNMonitor
from jepa_lightning.callbacks.mask_images import MaskImageLogger
from jepa_lightning.callbacks.metrics import (
    feature_std,
    knn_accuracy,
    rankme,
    target_decomposition,
    target_shares,
    weighted_knn_predict,
)
from jepa_lightning.callbacks.online_probe import OnlineLinearProbe
from jepa_lightning.callbacks.summary import FitSummary

__all__ = [
    "CollapseMonitor",
    "EMAMomentumSchedule",
    "FitSummary",
    "KNNMonitor",
    "MaskImageLogger",
    "OnlineLinearProbe",
    "ema_update",
    "feature_std",
    "knn_accuracy",
    "rankme",
    "target_decomposition",
    "target_shares",
    "weighted_knn_predict",
]
