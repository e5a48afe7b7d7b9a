"""DataModules: the embedded default and ImageFolder trees."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jepa_lightning import DigitsDataModule, ImageFolderDataModule


def test_digits_datamodule_real_images_and_splits() -> None:
    dm = DigitsDataModule(image_size=32, batch_size=16)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (16,) and y.max() < dm.num_classes == 10
    assert len(dm.train_ssl) + len(dm.val) == 1797
    assert len(dm.val) == 360  # ceil(0.2 · 1797), stratified
    # Eval transform is deterministic, the SSL transform is not.
    a, _ = dm.train_eval[0]
    b, _ = dm.train_eval[0]
    assert torch.equal(a, b)
    c, _ = dm.train_ssl[0]
    d, _ = dm.train_ssl[0]
    assert not torch.equal(c, d)
    # Normalised: roughly zero-centred per channel, channels replicated from grayscale.
    xv, _ = next(iter(dm.val_dataloader()))
    assert torch.allclose(xv[:, 0] * 0.229 + 0.485, xv[:, 1] * 0.224 + 0.456, atol=1e-5)


def test_image_folder_datamodule(image_folder: Path) -> None:
    dm = ImageFolderDataModule(
        root=str(image_folder), val_split="test", image_size=32, batch_size=4, num_workers=0
    )
    assert dm.num_classes == 2
    x, _y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32)  # grayscale and RGBA files come out RGB
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 32, 32)
    assert len(dm.train_eval_dataloader().dataset) == 12


def test_missing_dataset_path_names_the_path_and_the_fix(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(root=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"nope/train.*data.init_args.root"):
        dm.setup()
