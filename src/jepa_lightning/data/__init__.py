"""DataModules and transforms."""

from jepa_lightning.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from jepa_lightning.data.datamodule import (
    DigitsDataModule,
    ImageFolderDataModule,
    SSLDataModule,
    TensorImageDataset,
)
from jepa_lightning.data.folders import CheckedImageFolder
from jepa_lightning.data.sampling import (
    EpochSampler,
    ResumableDataLoader,
    SeededDataset,
    resumable_train_loader,
)
from jepa_lightning.data.transforms import SharedCropViews, eval_transform, ssl_transform

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CheckedImageFolder",
    "DigitsDataModule",
    "EpochSampler",
    "ImageFolderDataModule",
    "ResumableDataLoader",
    "SSLDataModule",
    "SeededDataset",
    "SharedCropViews",
    "TensorImageDataset",
    "eval_transform",
    "resumable_train_loader",
    "ssl_transform",
]
