"""jepa-lightning: Lightning modules for JEPA-style self-supervised pretraining."""

from jepa_lightning.callbacks import EMAMomentumSchedule
from jepa_lightning.data import DigitsDataModule, ImageFolderDataModule, SSLDataModule
from jepa_lightning.methods import CNNJEPA, JEPAModule

__version__ = "0.1.0"

__all__ = [
    "CNNJEPA",
    "DigitsDataModule",
    "EMAMomentumSchedule",
    "ImageFolderDataModule",
    "JEPAModule",
    "SSLDataModule",
    "__version__",
]
