"""Shared fixtures: tiny real datasets and trainers."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for in-process training: on 2 shared cores it spins least."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def check_gradients() -> Callable[[nn.Module], None]:
    """``check(model)`` after a backward: every trainable parameter has a non-zero gradient, the
    EMA target encoder's parameters none (and no ``requires_grad``)."""

    def check(model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name.startswith("target_encoder"):
                assert not p.requires_grad and p.grad is None, name
            else:
                assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient: {name}"

    return check


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ImageFolder tree (train/val/test, 2 classes, RGB/gray/RGBA PNGs of 40 px), and in
    the same root a tiny CIFAR-10 in torchvision's format (``cifar-10-batches-py/``), so the
    root serves configs of either DataModule."""
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
    write_cifar10(root)
    return root


def _batch(images: np.ndarray, labels: list[int], key: str) -> dict:
    # torchvision's layout: rows of 3072 bytes, the red plane, then green, then blue (CHW).
    return {"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1), key: labels}


def write_cifar10(root: Path, per_batch: int = 8, n_test: int = 10) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py`` with 5 training batches of ``per_batch`` images, a test
    batch and ``batches.meta``; returns the HWC images and labels written."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    n_train = 5 * per_batch
    images = rng.integers(0, 256, (n_train + n_test, 32, 32, 3), dtype=np.uint8)
    labels = (np.arange(n_train + n_test) * 7 % 10).tolist()
    for b in range(5):
        s = slice(b * per_batch, (b + 1) * per_batch)
        entry = _batch(images[s], labels[s], "labels")
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(entry))
    test = _batch(images[n_train:], labels[n_train:], "labels")
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    meta = {"label_names": [f"class{c}" for c in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return {
        "train": images[:n_train],
        "train_labels": np.array(labels[:n_train]),
        "test": images[n_train:],
        "test_labels": np.array(labels[n_train:]),
    }


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A root holding a tiny CIFAR-10 in torchvision's format (40 training images in 5 batches,
    10 test images) for ``CIFAR10DataModule(root=...)``, and the images and labels written."""
    root = tmp_path_factory.mktemp("cifar10")
    return root, write_cifar10(root)
