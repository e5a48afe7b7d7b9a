"""DataModules and transforms."""

from jepa_lightning.data.datamodule import (
    DigitsDataModule,
    ImageFolderDataModule,
    SSLDataModule,
    TensorImageDataset,
)
from jepa_lightning.data.transforms import eval_transform, ssl_transform

__all__ = [
    "DigitsDataModule",
    "ImageFolderDataModule",
    "SSLDataModule",
    "TensorImageDataset",
    "eval_transform",
    "ssl_transform",
]
