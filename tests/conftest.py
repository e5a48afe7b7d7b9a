"""Shared fixtures: tiny real datasets and trainers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

os.environ.setdefault("PYTHONHASHSEED", "0")
THREADS = max(1, min(2, os.cpu_count() or 1))
torch.set_num_threads(THREADS)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    """Every test starts with the suite's thread count: a test (or a script it runs in-process)
    that lowers it for its own determinism must not leave every later test single-threaded."""
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ImageFolder tree (train/val/test, 2 classes, RGB/gray/RGBA PNGs of 40 px)."""
    root = tmp_path_factory.mktemp("imagefolder")
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        for c, cls in enumerate(("cat", "dog")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8)
                arr[..., c] = 255
                img = Image.fromarray(arr.numpy())
                mode = ("RGB", "L", "RGBA")[i % 3]
                img.convert(mode).save(d / f"{i}.png")
    return root
