"""Mask generators: vectorised over the batch and seeded by a ``torch.Generator``."""

from jepa_lightning.masking.grid import (
    GridMasks,
    MaskGenerator,
    MixedMasking,
    MultiBlockMasking,
    RandomMasking,
)
from jepa_lightning.masking.ijepa import IJEPAMultiBlockMasking, PatchMasks

__all__ = [
    "GridMasks",
    "IJEPAMultiBlockMasking",
    "MaskGenerator",
    "MixedMasking",
    "MultiBlockMasking",
    "PatchMasks",
    "RandomMasking",
]
