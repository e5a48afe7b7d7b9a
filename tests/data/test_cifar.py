"""CIFAR-10 / CIFAR-100 DataModules on torchvision's classes, on tiny datasets written in
torchvision's own pickle-batch format (``tiny_cifar10`` in ``conftest.py``; no network)."""

from __future__ import annotations

import pickle
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torchvision.datasets import CIFAR10

from jepa_lightning import CIFAR10DataModule, CIFAR100DataModule, FitSummary
from jepa_lightning.cli import main
from jepa_lightning.data.cifar import CIFAR10_MEAN, CIFAR10_STD

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _unnormalise(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    return x * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]


def test_cifar10_images_labels_and_splits(tiny_cifar10: tuple[Path, dict]) -> None:
    root, written = tiny_cifar10
    dm = CIFAR10DataModule(root=str(root), batch_size=8, num_workers=0)
    dm.setup()
    assert dm.num_classes == 10 and dm.image_size == 32
    assert len(dm.train_ssl) == len(dm.train_eval) == 40 and len(dm.val) == 10
    # The evaluation transform at 32 px is resize-to-itself + normalise: the exact pixels, in
    # the right channel order and position, with the right label.
    for i in (0, 13, 39):
        x, y = dm.train_eval[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        pixels = torch.from_numpy(written["train"][i]).permute(2, 0, 1).float() / 255
        assert torch.allclose(_unnormalise(x, CIFAR10_MEAN, CIFAR10_STD), pixels, atol=1e-5)
        assert y == written["train_labels"][i]
    xv, yv = dm.val[9]
    pixels = torch.from_numpy(written["test"][9]).permute(2, 0, 1).float() / 255
    assert torch.allclose(_unnormalise(xv, CIFAR10_MEAN, CIFAR10_STD), pixels, atol=1e-5)
    assert yv == written["test_labels"][9]
    # The SSL loader: seeded crops of the same images, batches of (images, labels).
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,)
    assert set(y.tolist()) <= set(written["train_labels"].tolist())
    a, _ = dm.train_ssl[0]
    assert not torch.allclose(a, dm.train_eval[0][0])  # augmented, not the clean image


def test_cifar10_two_views(tiny_cifar10: tuple[Path, dict]) -> None:
    root, _ = tiny_cifar10
    dm = CIFAR10DataModule(root=str(root), batch_size=4, num_workers=0, num_views=2)
    views, labels = next(iter(dm.train_dataloader()))
    assert len(views) == 2 and views[0].shape == views[1].shape == (4, 3, 32, 32)
    assert not torch.equal(views[0], views[1]) and labels.shape == (4,)


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for split, n in (("train", 12), ("test", 6)):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        rows = images.transpose(0, 3, 1, 2).reshape(n, -1)  # torchvision's layout (see conftest)
        entry = {"data": rows, "fine_labels": [99 - i for i in range(n)]}
        entry["coarse_labels"] = [0] * n
        (folder / split).write_bytes(pickle.dumps(entry))
    meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["x"]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    dm = CIFAR100DataModule(root=str(tmp_path), batch_size=4, num_workers=0)
    dm.setup()
    assert dm.num_classes == 100 and len(dm.train_ssl) == 12 and len(dm.val) == 6
    assert [dm.train_eval[i][1] for i in range(3)] == [99, 98, 97]  # fine, not coarse labels
    assert dm.mean != CIFAR10_MEAN  # CIFAR-100's own statistics


def test_absent_dataset_names_the_folder_and_the_flag(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as err:
        dm.setup()
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert "--data.init_args.download true" in message and "data_batch_1" in message


def test_partial_dataset_names_the_missing_files(
    tiny_cifar10: tuple[Path, dict], tmp_path: Path
) -> None:
    shutil.copytree(tiny_cifar10[0], tmp_path, dirs_exist_ok=True)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="found no test_batch"):
        CIFAR10DataModule(root=str(tmp_path)).setup()


def test_damaged_file_is_a_clear_error(tiny_cifar10: tuple[Path, dict], tmp_path: Path) -> None:
    shutil.copytree(tiny_cifar10[0], tmp_path, dirs_exist_ok=True)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"Cannot read CIFAR-10 from .*cifar-10-batches-py"):
        CIFAR10DataModule(root=str(tmp_path)).setup()


def test_failed_download_names_the_url_folder_and_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An address that refuses connections at once (the discard port on this machine): the
    # download fails as on a machine without network, without leaving it.
    url = "http://127.0.0.1:9/cifar-10-python.tar.gz"
    monkeypatch.setattr(CIFAR10, "url", url)
    dm = CIFAR10DataModule(root=str(tmp_path / "dl"), download=True)
    with pytest.raises(RuntimeError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert url in message and str(tmp_path / "dl") in message
    assert "--data.init_args.download false" in message


def test_cli_print_config_switches_the_data_class(
    tiny_cifar10: tuple[Path, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's command line: another DataModule class for a shipped config."""
    root, _ = tiny_cifar10
    args = ["fit", "--config", str(CONFIGS / "quickstart.yaml"),
            "--data", "jepa_lightning.CIFAR10DataModule",
            "--data.init_args.root", str(root), "--data.init_args.download", "false",
            "--print_config"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert data["class_path"] == "jepa_lightning.CIFAR10DataModule"
    init = data["init_args"]
    assert init["root"] == str(root) and init["download"] is False
    assert init["image_size"] == 32 and init["batch_size"] == 64  # kept from the config
    assert list(init["mean"]) == list(CIFAR10_MEAN)


@pytest.mark.slow
def test_cli_fast_dev_run_on_tiny_cifar10(tiny_cifar10: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = tiny_cifar10
    cli = main(
        [
            "fit", "--config", str(CONFIGS / "quickstart.yaml"),
            "--data", "jepa_lightning.CIFAR10DataModule",
            "--data.init_args.root", str(root),
            "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
            "--trainer.fast_dev_run", "1",
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert isinstance(cli.datamodule, CIFAR10DataModule)
    assert cli.trainer.global_step == 1
    assert cli.trainer.callback_metrics["train/loss"].isfinite()


def test_summary_evaluates_on_the_runs_data(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """FitSummary's evaluation command for a CIFAR10DataModule config after an ImageFolder run
    (the JPEG tree of ../shared) names the run's class, root and split folders, and parses as
    printed into the data the run used."""
    cli = main(["--config", str(CONFIGS / "quickstart.yaml"),
                "--data", "jepa_lightning.ImageFolderDataModule",
                "--data.init_args.root", str(image_folder), "--data.init_args.val_split", "test",
                "--trainer.logger", "false"], run=False)  # fmt: skip
    cli.trainer.datamodule = cli.datamodule
    summary = FitSummary(eval_configs=["configs/eval/linear_cifar10.yaml"], export=False)
    text = summary.summary(cli.trainer, cli.model)
    line = next(x for x in text.splitlines() if "linear_cifar10" in x)
    assert "--data jepa_lightning.ImageFolderDataModule" in line and str(image_folder) in line
    command = shlex.split(line)
    assert command[:3] == ["jepa-lightning", "fit", "--config"]
    command[3] = str(CONFIGS.parent / command[3])  # the test's working directory may differ
    with pytest.raises(SystemExit) as exc:
        main([*command[1:], "--print_config"])
    assert exc.value.code == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert data["class_path"] == "jepa_lightning.ImageFolderDataModule"
    assert data["init_args"]["root"] == str(image_folder)
    assert data["init_args"]["val_split"] == "test"
