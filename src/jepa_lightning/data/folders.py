"""``ImageFolder`` with errors that name the file or folder at fault."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from torchvision.datasets import ImageFolder

#: What to do with an image file that cannot be decoded.
BadImagePolicy = Literal["raise", "skip"]

#: Errors PIL raises for unreadable, corrupt or truncated files.
IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes PIL.UnidentifiedImageError and "image file is truncated"
    SyntaxError,  # e.g. "broken PNG file"
    ValueError,
    Image.DecompressionBombError,
)


class CheckedImageFolder(ImageFolder):
    """``torchvision.datasets.ImageFolder`` (images are converted to RGB, so grayscale, palette
    and RGBA files work) that names the file it cannot read.

    Args:
        root: Folder with one sub-folder of images per class.
        transform: Transform applied to the PIL image.
        on_bad_image: ``"raise"``: fail with an ``OSError`` naming the file. ``"skip"``: warn
            (naming the file) and return the next readable image of the folder instead, so
            batches keep their size.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable | None = None,
        on_bad_image: BadImagePolicy = "raise",
    ) -> None:
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        try:
            super().__init__(str(root), transform=transform)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"Cannot build an image dataset from {str(root)!r}: {exc} Every class needs "
                "its own sub-folder holding at least one image; remove empty class folders."
            ) from exc

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self.samples)
        for offset in range(n):
            path, target = self.samples[(index + offset) % n]
            try:
                image = self.loader(path)
            except IMAGE_ERRORS as exc:
                if self.on_bad_image == "raise":
                    raise OSError(
                        f"Cannot read image {path!r} ({type(exc).__name__}: {exc}). Fix or "
                        "delete the file, or set data.init_args.on_bad_image: skip to skip "
                        "unreadable images with a warning."
                    ) from exc
                warnings.warn(
                    f"Skipping unreadable image {path!r} ({type(exc).__name__}: {exc}); "
                    "using the next readable image instead.",
                    stacklevel=2,
                )
                continue
            if self.transform is not None:
                image = self.transform(image)
            return image, target
        raise OSError(f"No image under {self.root!r} can be read.")
