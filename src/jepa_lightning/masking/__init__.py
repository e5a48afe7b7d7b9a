"""Mask generators: vectorised over the batch and seeded by a ``torch.Generator``."""

from jepa_lightning.masking.grid import (
    GridMasks,
    MaskGenerator,
    MixedMasking,
    MultiBlockMasking,
    RandomMasking,
)

__all__ = ["GridMasks", "MaskGenerator", "MixedMasking", "MultiBlockMasking", "RandomMasking"]
