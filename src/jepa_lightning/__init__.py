"""jepa-lightning: Lightning modules for JEPA-style self-supervised pretraining."""

from jepa_lightning.callbacks import (
    CollapseMonitor,
    EMAMomentumSchedule,
    KNNMonitor,
    MaskImageLogger,
    OnlineLinearProbe,
)
from jepa_lightning.data import DigitsDataModule, ImageFolderDataModule, SSLDataModule
from jepa_lightning.evaluation import FineTune, KNNEvaluation, LinearEvaluation, load_pretrained
from jepa_lightning.methods import CJEPA, CNNJEPA, IJEPA, JEPAModule

__version__ = "0.1.0"

__all__ = [
    "CJEPA",
    "CNNJEPA",
    "IJEPA",
    "CollapseMonitor",
    "DigitsDataModule",
    "EMAMomentumSchedule",
    "FineTune",
    "ImageFolderDataModule",
    "JEPAModule",
    "KNNEvaluation",
    "KNNMonitor",
    "LinearEvaluation",
    "MaskImageLogger",
    "OnlineLinearProbe",
    "SSLDataModule",
    "__version__",
    "load_pretrained",
]
