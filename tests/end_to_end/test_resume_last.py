"""``resume: auto``: which checkpoint the same command resumes from, and what it says.

The folders come from the shipped quickstart config (a TensorBoard logger with a new
``version_<n>`` per run, ``ModelCheckpoint`` without a ``dirpath``); the checkpoint files are
small real ``torch.save`` files with the keys a Lightning checkpoint has. The end-to-end runs
(preempted, then resumed by the identical command) are in ``tests/end_to_end/test_preemption.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from jepa_lightning.checkpointing import CheckpointError
from jepa_lightning.resume import checkpoint_folders, resolve_last

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    """The quickstart config's ``trainer`` and ``model`` sections, writing under ``tmp_path``."""
    cfg = yaml.safe_load(QUICKSTART.read_text())
    assert cfg["resume"] == "auto"  # the shipped configs resume by default
    cfg["trainer"]["default_root_dir"] = str(tmp_path)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    return cfg


def _write(path: Path, step: int, age_s: float, **changes: Any) -> Path:
    """A checkpoint of ``step`` written ``age_s`` seconds ago."""
    checkpoint = {
        "state_dict": {"w": torch.zeros(2)}, "optimizer_states": [{}], "loops": {},
        "global_step": step, "epoch": step // 22,
        "hyper_parameters": {"_class_path": "jepa_lightning.CNNJEPA", "backbone": "resnet18"},
    }  # fmt: skip
    checkpoint.update(changes)
    checkpoint = {k: v for k, v in checkpoint.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    stamp = path.stat().st_mtime - age_s
    os.utime(path, (stamp, stamp))
    return path


def _version(tmp_path: Path, n: int, name: str = "last.ckpt") -> Path:
    return tmp_path / "runs" / "quickstart" / f"version_{n}" / "checkpoints" / name


def test_folders_are_every_logger_versions_checkpoints(config: dict, tmp_path: Path) -> None:
    for n in (0, 1):
        _version(tmp_path, n).parent.mkdir(parents=True)
    default = tmp_path / "checkpoints"  # always searched: PreemptionCheckpoint's fallback
    versions = [_version(tmp_path, n).parent for n in (0, 1)]
    assert checkpoint_folders(config["trainer"]) == [*versions, default]
    trainer = {**config["trainer"], "logger": False}  # no logger: <default_root_dir>/checkpoints
    assert checkpoint_folders(trainer) == [default]
    saver = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": str(tmp_path / "mine")}}  # fmt: skip
    assert checkpoint_folders({**trainer, "callbacks": [saver]}) == [tmp_path / "mine", default]


def test_newest_checkpoint_of_the_run_across_versions_and_slurm(
    config: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(_version(tmp_path, 0), 22, age_s=300)
    _write(_version(tmp_path, 0, "epoch=0-step=11.ckpt"), 11, age_s=400)
    newest = _write(_version(tmp_path, 1), 30, age_s=100)  # the rerun wrote here
    _write(tmp_path / "hpc_ckpt_1.ckpt", 26, age_s=200)
    _write(tmp_path / "unrelated.ckpt", 99, age_s=0)  # not in a checkpoint folder: ignored
    assert resolve_last(config["trainer"], config["model"]) == str(newest)
    err = capsys.readouterr().err
    assert err == (f"jepa-lightning: resume: auto: resuming from {newest} (step 30, "
                   "epoch 1): the newest of this run.\n")  # fmt: skip
    hpc = _write(tmp_path / "hpc_ckpt_2.ckpt", 34, age_s=50)  # SLURM's requeue checkpoint
    assert resolve_last(config["trainer"], config["model"]) == str(hpc)


def test_damaged_or_weights_only_newest_is_skipped_with_a_line(
    config: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write(_version(tmp_path, 0), 22, age_s=300)
    weights = _write(_version(tmp_path, 1), 30, age_s=200, optimizer_states=None, loops=None)
    damaged = _version(tmp_path, 2)
    data = _write(damaged, 40, age_s=100).read_bytes()
    damaged.write_bytes(data[: len(data) // 2])  # e.g. copied while written by another tool
    assert resolve_last(config["trainer"], config["model"]) == str(good)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"jepa-lightning: resume: auto: skipping {damaged}: Checkpoint ")
    assert "is truncated or damaged" in lines[0]
    assert lines[1] == (f"jepa-lightning: resume: auto: skipping {weights}: it holds weights "
                        "only, not a training state to resume.")  # fmt: skip
    assert lines[2].startswith(f"jepa-lightning: resume: auto: resuming from {good} (step 22")


def test_no_checkpoint_means_a_fresh_run_and_says_so(
    config: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert resolve_last(config["trainer"], config["model"]) is None
    err = capsys.readouterr().err
    assert err.startswith("jepa-lightning: resume: auto: no checkpoint of this run (looked in ")
    assert err.endswith(": starting a fresh run.\n")


def test_checkpoint_of_another_architecture_stops_the_run(config: dict, tmp_path: Path) -> None:
    """The newest file fits another backbone: the config changed under the same run name."""
    hparams = {"_class_path": "jepa_lightning.CNNJEPA", "backbone": "resnet50"}
    path = _write(_version(tmp_path, 0), 22, age_s=10, hyper_parameters=hparams)
    with pytest.raises(CheckpointError, match=f"^Checkpoint '{path}' does not fit .*resnet50"):
        resolve_last(config["trainer"], config["model"])
