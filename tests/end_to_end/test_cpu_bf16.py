"""bf16 resolved to a CPU without native bf16: 32-bit with one warning, unless forced."""

from __future__ import annotations

import platform
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from lightning.fabric.accelerators.mps import MPSAccelerator

import jepa_lightning.precision as precision
from jepa_lightning.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cifar10_cnn_cjepa_resnet18.yaml"
GPU_HERE = torch.cuda.is_available() or MPSAccelerator.is_available()


def _args(image_folder: Path, tmp_path: Path) -> list[str]:
    args = [
        "--config", str(CONFIG),
        "--data.init_args.root", str(image_folder),
        "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    ]  # fmt: skip
    # The config's own ``accelerator: auto`` resolves to the CPU here; on a machine with a GPU
    # that would be the GPU (no fallback, rightly), so the CPU is named there.
    return args + (["--trainer.accelerator", "cpu"] if GPU_HERE else [])


def _fallback_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if "without native bf16" in str(w.message)]


def test_shipped_config_sets_bf16_with_auto_accelerator() -> None:
    trainer = yaml.safe_load(CONFIG.read_text())["trainer"]
    assert trainer["precision"] == "bf16-mixed" and trainer["accelerator"] == "auto"


@pytest.mark.slow
def test_no_native_bf16_falls_back_to_32_and_trains(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    monkeypatch.delenv(precision.FORCE_ENV, raising=False)
    args = ["fit", *_args(image_folder, tmp_path), "--trainer.fast_dev_run", "1"]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cli = main(args)
    messages = _fallback_warnings(record)
    assert len(messages) == 1, messages
    assert "'bf16-mixed'" in messages[0] and "32-true" in messages[0]
    assert f"{precision.FORCE_ENV}=1" in messages[0]  # how to force it
    assert cli.trainer.precision == "32-true"
    assert cli.config.fit.trainer.precision == "32-true"  # what the saved config.yaml says
    assert cli.trainer.global_step == 1
    assert cli.trainer.callback_metrics["train/loss"].isfinite()


@pytest.mark.parametrize("has_bf16, force", [(True, None), (False, "1")])
def test_native_or_forced_bf16_is_kept(
    has_bf16: bool,
    force: str | None,
    image_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: has_bf16)
    if force is None:
        monkeypatch.delenv(precision.FORCE_ENV, raising=False)
    else:
        monkeypatch.setenv(precision.FORCE_ENV, force)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cli = main(_args(image_folder, tmp_path), run=False)
    assert cli.trainer.precision == "bf16-mixed"
    assert not _fallback_warnings(record)


def test_fallback_only_for_bf16_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    monkeypatch.delenv(precision.FORCE_ENV, raising=False)
    with pytest.warns(UserWarning, match="without native bf16"):
        assert precision.cpu_precision_fallback("cpu", "bf16-true") == "32-true"
    with pytest.warns(UserWarning, match="without native bf16"):
        assert precision.cpu_precision_fallback("cpu", 16) == "32-true"  # bf16 on a CPU too
    assert precision.cpu_precision_fallback("cpu", "32-true") is None
    assert precision.cpu_precision_fallback("gpu", "bf16-mixed") is None
    assert precision.cpu_precision_fallback("cuda", "bf16-mixed") is None


def test_auto_resolves_as_lightning_does() -> None:
    assert precision.resolves_to_cpu("auto") is not GPU_HERE
    assert precision.resolves_to_cpu("cpu") and precision.resolves_to_cpu("CPU")
    assert not precision.resolves_to_cpu("gpu")


@pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/cpuinfo")
def test_probe_agrees_with_the_kernels_cpu_flags() -> None:
    """The real capability check, not a name: torch's probes and the kernel's flags agree."""
    flags = precision._cpuinfo_flags()
    assert flags, "no CPU flags in /proc/cpuinfo"
    assert precision.cpu_supports_bf16() == bool(flags & precision.BF16_CPU_FLAGS)
