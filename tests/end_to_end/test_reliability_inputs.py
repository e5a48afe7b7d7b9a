"""Bad input fails early with a message that names the problem and the fix."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from PIL import Image

from jepa_lightning import CNNJEPA, DigitsDataModule, ImageFolderDataModule
from jepa_lightning.cli import main

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
CLI = ["fit", "--config", str(QUICKSTART), "--trainer.logger", "false"]
CLI += ["--trainer.callbacks", "[]", "--trainer.max_steps", "1"]


def _png(path: Path, mode: str = "RGB", size: int = 40) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (200, 30, 90)).convert(mode).save(path)


def _tree(root: Path, classes: tuple[str, ...] = ("a", "b"), n: int = 2) -> Path:
    for split in ("train", "val"):
        for cls in classes:
            for i in range(n):
                _png(root / split / cls / f"{i}.png")
    return root


def _tiny_trainer(tmp_path: Path, **kwargs: Any) -> pl.Trainer:
    kwargs = {
        "accelerator": "cpu", "max_steps": 4, "limit_val_batches": 0, "logger": False,
        "enable_progress_bar": False, "enable_model_summary": False,
        "default_root_dir": tmp_path, **kwargs,
    }  # fmt: skip
    return pl.Trainer(**kwargs)


def _tiny_model(**kwargs: Any) -> CNNJEPA:
    return CNNJEPA(backbone="resnet18", small_images=True, image_size=32, **kwargs)


# ------------------------------------------------------------------------- data
def test_missing_dataset_path_through_the_cli(tmp_path: Path) -> None:
    args = ["--data", "jepa_lightning.ImageFolderDataModule"]
    args += ["--data.init_args.root", str(tmp_path / "nope"), "--data.init_args.image_size", "32"]
    args += ["--trainer.default_root_dir", str(tmp_path)]  # not the working directory
    with pytest.raises(FileNotFoundError, match=r"'.*nope/train' does not exist. Set data.init"):
        main(CLI + args)


def test_empty_class_folder_names_the_class_and_folder(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "train" / "empty_cls").mkdir()
    dm = ImageFolderDataModule(root=str(root), image_size=32, batch_size=2, num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"train'.*no valid file for the classes empty_cls"):
        dm.setup()


def _corrupt(root: Path) -> tuple[Path, Path]:
    garbage = root / "train" / "a" / "garbage.jpg"
    garbage.write_bytes(b"this is not an image" * 10)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="JPEG")
    truncated = root / "train" / "b" / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return garbage, truncated


def test_corrupt_or_truncated_image_raises_naming_the_file(tmp_path: Path) -> None:
    garbage, truncated = _corrupt(_tree(tmp_path))
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=32, num_workers=0)
    dm.setup()
    data = dm.train_eval
    for bad in (garbage, truncated):
        index = next(i for i, (p, _) in enumerate(data.samples) if p == str(bad))
        with pytest.raises(OSError, match=rf"Cannot read image '{bad}'.*on_bad_image: skip"):
            data[index]


def test_corrupt_images_can_be_skipped_with_a_warning(tmp_path: Path) -> None:
    garbage, truncated = _corrupt(_tree(tmp_path))
    dm = ImageFolderDataModule(
        root=str(tmp_path), image_size=32, batch_size=6, num_workers=0, on_bad_image="skip"
    )
    with pytest.warns(UserWarning) as caught:
        images, labels = next(iter(dm.train_dataloader()))  # all 6 files, 2 unreadable
    assert images.shape == (6, 3, 32, 32) and labels.shape == (6,)
    messages = " ".join(str(w.message) for w in caught)
    assert f"Skipping unreadable image '{garbage}'" in messages
    assert f"Skipping unreadable image '{truncated}'" in messages


def test_grayscale_palette_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    for cls, mode in (("gray", "L"), ("palette", "P"), ("rgba", "RGBA"), ("gray16", "I;16")):
        for split in ("train", "val"):
            _png(tmp_path / split / cls / "0.png", mode)
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=32, num_workers=0)
    dm.setup()
    for image, label in (dm.train_eval[i] for i in range(len(dm.train_eval))):
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        if dm.train_eval.classes[label] == "gray":  # equal channels before normalisation
            raw = image * torch.tensor(dm.std)[:, None, None] + torch.tensor(dm.mean)[:, None, None]
            torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------- model and config
def test_unknown_backbone_through_the_cli() -> None:
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet19'. Choose one of: resnet101"):
        main([*CLI, "--model.init_args.backbone", "resnet19"])


def test_misspelt_config_key_exits_nonzero_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  init_args:\n    predictor_dept: 2\n")
    with pytest.raises(SystemExit) as exc:
        main([*CLI, "--config", str(config)])
    assert exc.value.code != 0
    assert "Option 'predictor_dept' is not accepted" in capsys.readouterr().err


def test_image_size_that_does_not_fit_the_backbone_through_the_cli() -> None:
    with pytest.raises(ValueError, match=r"image_size=36 .* must be a multiple of 8"):
        main([*CLI, "--data.init_args.image_size", "36"])


def test_batch_of_the_wrong_size_names_both_sizes() -> None:
    model = _tiny_model()
    with pytest.raises(ValueError, match=r"shape \(2, 3, 40, 40\).*\(B, 3, 32, 32\).*image_size"):
        model.shared_step(torch.randn(2, 3, 40, 40))


@pytest.mark.parametrize(
    ("masking", "match"),
    [
        ("MultiBlockMasking", r"cannot be satisfied on a 4x4 grid.*min_context=5"),
        ("RandomMasking", r"mask_ratio=0.99 masks 16 of 16 cells on a 4x4 grid"),
    ],
)
def test_unsatisfiable_mask_settings_through_the_cli(masking: str, match: str) -> None:
    args = ["--model.init_args.masking", f"jepa_lightning.masking.{masking}"]
    if masking == "MultiBlockMasking":
        args += ["--model.init_args.masking.init_args.block_scale", "[0.9, 0.95]"]
    else:
        args += ["--model.init_args.masking.init_args.mask_ratio", "0.99"]
    with pytest.raises(ValueError, match=match):
        main(CLI + args)


def test_batch_of_one_fails_at_setup(tmp_path: Path) -> None:
    trainer = _tiny_trainer(tmp_path)
    with pytest.raises(ValueError, match=r"batch_size=1 is too small: BatchNorm .* at least 2"):
        trainer.fit(_tiny_model(), datamodule=DigitsDataModule(image_size=32, batch_size=1))
    assert trainer.global_step == 0


# ------------------------------------------------------------------------- NaN / inf
class _Poison(Callback):
    """Make the batch (``where="input"``) or a weight (``"weight"``) NaN at step ``step``."""

    def __init__(self, where: str, step: int) -> None:
        self.where, self.step = where, step

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if self.where == "input" and trainer.global_step == self.step:
            batch[0][0].fill_(float("nan"))

    def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
        if self.where == "weight" and trainer.global_step == self.step:
            with torch.no_grad():
                module.predictor.mask_token.fill_(float("inf"))


def _nan_run(tmp_path: Path, where: str) -> str:
    ckpt_dir = tmp_path / "ckpt"
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_last=True)
    trainer = _tiny_trainer(tmp_path, callbacks=[_Poison(where, 2), ckpt])
    data = DigitsDataModule(image_size=32, batch_size=4)
    pl.seed_everything(0, verbose=False)
    with pytest.raises(FloatingPointError) as exc:
        trainer.fit(_tiny_model(), datamodule=data)
    return str(exc.value)


@pytest.mark.usefixtures("one_thread")
def test_nan_loss_names_the_step_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    message = _nan_run(tmp_path, "input")
    assert message.startswith("Loss is nan at step 2 (last finite loss: 0.")
    assert "lower optimizer.init_args.lr" in message
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["epoch=0-step=2.ckpt", "last.ckpt"]  # written before the NaN step
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert all(v.isfinite().all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.usefixtures("one_thread")
def test_non_finite_weights_are_never_checkpointed(tmp_path: Path) -> None:
    message = _nan_run(tmp_path, "weight")
    assert message.startswith("Parameters are not finite at step 2 (predictor.mask_token)")
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["epoch=0-step=1.ckpt", "last.ckpt"]  # the step-1 checkpoint stays
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 1
