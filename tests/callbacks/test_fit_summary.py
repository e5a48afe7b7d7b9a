"""The closing summary after ``fit``: real files, real numbers, runnable next commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jepa_lightning import FitSummary
from jepa_lightning.cli import main
from jepa_lightning.export import main as export_main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _quickstart(tmp_path: Path, logger: bool = True) -> Path:
    """The shipped quickstart with a 64-image k-NN bank (the one change for test speed); without
    the logger also without the LearningRateMonitor, which refuses to run without one."""
    config = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    if not logger:
        config["trainer"]["logger"] = False
        config["trainer"]["callbacks"] = [
            cb for cb in config["trainer"]["callbacks"] if "LearningRate" not in cb["class_path"]
        ]
    for cb in config["trainer"]["callbacks"]:
        if cb["class_path"].endswith("KNNMonitor"):
            cb.setdefault("init_args", {})["max_bank_size"] = 64
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(tmp_path: Path, *extra: str, logger: bool = True) -> FitSummary:
    # NOTE: never "1" for limit_*_batches on the command line: it parses as 1.0 = every batch.
    args = [
        "fit", "--config", str(_quickstart(tmp_path, logger)),
        "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "2",
        "--trainer.log_every_n_steps", "1",
        "--data.init_args.batch_size", "16",
        *extra,
    ]  # fmt: skip
    if logger:
        args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    cli = main(args)
    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, FitSummary))


def _line(text: str, pattern: str) -> re.Match[str]:
    match = re.search(pattern, text, flags=re.MULTILINE)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    return match


def test_quickstart_config_has_the_summary() -> None:
    callbacks = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())["trainer"]["callbacks"]
    assert any(cb["class_path"] == "jepa_lightning.FitSummary" for cb in callbacks)


@pytest.mark.slow
def test_summary_names_real_files_numbers_and_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = _fit(tmp_path)
    out = capsys.readouterr().out
    assert summary.text and summary.text in out
    text = summary.text

    ckpt = _line(text, r"^checkpoint \(last\): (\S+)$").group(1)
    assert Path(ckpt).is_file() and Path(ckpt).name == "last.ckpt"
    log_dir = Path(_line(text, r"^logs \(TensorBoardLogger\): (\S+)$").group(1))
    assert log_dir.is_dir() and list(log_dir.glob("events.out.tfevents.*"))
    assert log_dir.parent.parent == tmp_path / "runs"  # save_dir/quickstart/version_0

    # The numbers are the ones in TensorBoard: first/last step loss, first/last k-NN.
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.value for e in events.Scalars("train/loss_step")]
    assert len(steps) == 4
    loss = _line(text, r"^train loss: (\S+) \(first step\) -> (\S+) \(last\)")
    assert float(loss.group(1)) == pytest.approx(steps[0], abs=1e-4)
    assert float(loss.group(2)) == pytest.approx(steps[-1], abs=1e-4)
    knn_logged = [e.value for e in events.Scalars("knn/top1")]
    assert len(knn_logged) == 2  # epochs 0 and 1 (every_n_epochs 2 and the last epoch)
    knn = _line(text, r"^k-NN top-1 \(KNNMonitor\): (\S+) \(epoch 0\) -> (\S+) \(epoch 1\)$")
    assert float(knn.group(1)) == pytest.approx(knn_logged[0], abs=1e-4)
    assert float(knn.group(2)) == pytest.approx(knn_logged[1], abs=1e-4)

    # The next commands, with the actual paths.
    assert f"  tensorboard --logdir {log_dir}" in text
    linear = "  jepa-lightning fit --config configs/eval/linear_digits.yaml "
    linear += f"--model.init_args.checkpoint {ckpt}"
    knn_eval = "  jepa-lightning validate --config configs/eval/knn_digits.yaml "
    knn_eval += f"--model.init_args.checkpoint {ckpt}"
    assert linear in text.splitlines() and knn_eval in text.splitlines()
    # ... and the export command runs as printed (only the output file moved to tmp_path).
    export = shlex.split(_line(text, r"^  (jepa-lightning-export .*)$").group(1))
    assert export[1:] == [ckpt, "backbone.pt"]
    info = export_main([ckpt, str(tmp_path / "backbone.pt")])
    assert Path(info["output"]).is_file()


@pytest.mark.parametrize("logger", [True, False], ids=["no_progress_bar", "no_logger"])
def test_summary_is_quiet(logger: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Quiet with the progress bar off (logger on), and with logging off (progress bar on)."""
    quiet = ["--trainer.enable_progress_bar", "false"] if logger else []
    summary = _fit(
        tmp_path,
        "--trainer.max_steps", "1",
        "--trainer.limit_val_batches", "0",
        "--trainer.default_root_dir", str(tmp_path),
        *quiet,
        logger=logger,
    )  # fmt: skip
    assert summary.text == ""
    assert "fit finished" not in capsys.readouterr().out
    ckpt = next((tmp_path / ("runs" if logger else ".")).rglob("last.ckpt"))
    assert ckpt.is_file()  # the run itself happened and saved its checkpoint
