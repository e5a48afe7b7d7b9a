"""Every shipped config parses through the real CLI, and a tiny twin of each trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jepa_lightning.cli import main
from jepa_lightning.data import SSLDataModule
from jepa_lightning.evaluation.pretrained import import_class

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

ALL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml"))
# Evaluation configs (configs/eval/) need a pretraining checkpoint and some run `validate`:
# their tiny runs are in tests/evaluation/test_eval_configs.py.
PRETRAIN_CONFIGS = [p for p in ALL_CONFIGS if p.parent.name != "eval"]

# Per-config overrides that make the tiny twin small but keep its structure (backbone, masking,
# precision, callbacks). Configs not listed get only the generic overrides.
TINY: dict[str, list[str]] = {
    "imagenet100_cnn_jepa_resnet50.yaml": ["--data.init_args.image_size", "128"],
    # ViT-B/16 at 128 px = 8x8 patches; two blocks each instead of 12 (CPU).
    "imagenet1k_cjepa_vit_base16.yaml": ["--data.init_args.image_size", "128",
                                         "--model.init_args.depth", "2",
                                         "--model.init_args.predictor_depth", "2"],
}  # fmt: skip


# One CPU process, whatever the config asks for (GPU configs parse and build on CPU machines).
CPU_TRAINER = ["--trainer.accelerator", "cpu", "--trainer.devices", "1",
               "--trainer.num_nodes", "1", "--trainer.strategy", "auto"]  # fmt: skip


def _cfg(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _data_overrides(path: Path, image_folder: Path) -> list[str]:
    data = _cfg(path).get("data", {})
    args = ["--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0"]
    if data.get("class_path", "").endswith(("ImageFolderDataModule", "CIFAR10DataModule")):
        args += ["--data.init_args.root", str(image_folder)]  # holds both formats
    if data.get("class_path", "").endswith("ImageFolderDataModule"):
        split = data.get("init_args", {}).get("val_split", "val")
        assert (image_folder / split).is_dir()
    return args


def test_configs_exist() -> None:
    names = {p.name for p in ALL_CONFIGS}
    assert {"quickstart.yaml", "cifar10_cnn_jepa_resnet18.yaml"} <= names
    assert "imagenet100_cnn_jepa_resnet50.yaml" in names


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.name)
def test_print_config(path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(path), *_data_overrides(path, image_folder), "--print_config"])
    assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == _cfg(path)["model"]["class_path"]
    # The image size is said once, in the data section, and linked into the model.
    assert "image_size" not in _cfg(path)["model"].get("init_args", {})


def _settings(dm: SSLDataModule) -> dict:
    return {k: v for k, v in vars(dm).items() if isinstance(v, (int, float, str, tuple, bool))}


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.name)
def test_cli_datamodule_equals_python(path: Path, image_folder: Path) -> None:
    """The DataModule the CLI builds from a config has exactly the settings of the same class
    built in Python from the config's ``init_args``: no default is lost on the way (a default
    injected into ``**kwargs`` in ``__init__`` is, because the CLI passes every base argument)."""
    overrides = _data_overrides(path, image_folder)
    args = ["--config", str(path), *overrides, *CPU_TRAINER, "--trainer.logger", "false"]
    cli = main(args, run=False)
    data = _cfg(path)["data"]
    kwargs = dict(data.get("init_args", {}))
    pairs = zip(overrides[::2], overrides[1::2], strict=True)  # ("--data.init_args.x", "v")
    kwargs.update({arg.split(".")[-1]: yaml.safe_load(value) for arg, value in pairs})
    python = import_class(data["class_path"])(**kwargs)
    assert _settings(cli.datamodule) == _settings(python)


@pytest.mark.slow
@pytest.mark.parametrize("path", PRETRAIN_CONFIGS, ids=lambda p: p.name)
def test_tiny_twin_fits(path: Path, image_folder: Path, tmp_path: Path) -> None:
    args = [
        "fit",
        "--config", str(path),
        *_data_overrides(path, image_folder),
        *TINY.get(path.name, []),
        *CPU_TRAINER,
        "--trainer.fast_dev_run", "1",
        "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip
    if "logger" in _cfg(path).get("trainer", {}):
        args += ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    cli = main(args)
    assert cli.trainer.global_step == 1
    loss = cli.trainer.callback_metrics["train/loss"]
    assert loss.isfinite()
