"""jepa-lightning: Lightning modules for JEPA-style self-supervised pretraining."""

from jepa_lightning.callbacks import (
    CollapseMonitor,
    EMAMomentumSchedule,
    KNNMonitor,
    MaskImageLogger,
    OnlineLinearProbe,
)
from jepa_lightning.data import DigitsDataModule, ImageFolderDataModule, SSLDataModule
from jepa_lightning.methods import CNNJEPA, JEPAModule

__version__ = "0.1.0"

__all__ = [
    "CNNJEPA",
    "CollapseMonitor",
    "DigitsDataModule",
    "EMAMomentumSchedule",
    "ImageFolderDataModule",
    "JEPAModule",
    "KNNMonitor",
    "MaskImageLogger",
    "OnlineLinearProbe",
    "SSLDataModule",
    "__version__",
]
