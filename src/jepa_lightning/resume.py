"""``resume: auto`` for ``jepa-lightning fit``: the same command continues the same run.

A preempted or crashed job is rerun with the identical command. With ``resume: auto`` (the
shipped configs set it) and no ``--ckpt_path``, the CLI resumes from the newest good checkpoint
of the run, or starts a fresh run when there is none, and says which on stderr. The run's
checkpoints are every ``*.ckpt`` in the folders its ``ModelCheckpoint`` callbacks write to (for
a callback without a ``dirpath``: the ``checkpoints`` folder of *every* version of the first
logger, ``<save_dir>/<name>/*/checkpoints``, or without a logger
``<default_root_dir>/checkpoints``), in ``<default_root_dir>/checkpoints`` always, and
Lightning's SLURM ``hpc_ckpt_<n>.ckpt`` in ``default_root_dir``: where
:class:`~jepa_lightning.PreemptionCheckpoint` writes, too. The newest is the most recently
written; one that is unreadable (damaged, truncated) or holds weights only is skipped with a
line saying so. One written for another method or architecture than the config asks for stops
the run with a :class:`~jepa_lightning.checkpointing.CheckpointError`, as it would given as
``--ckpt_path``. An explicit ``--ckpt_path FILE`` wins; ``--resume never`` starts afresh.

NOTE: why not Lightning's own ``ckpt_path="last"``: it looks only in the folder of the *new*
logger version (``version_<n+1>``, empty for a rerun), so with a versioned logger it never finds
the previous job's checkpoint, and it does not check the file. This module finds the file before
Lightning runs, from the parsed config, following Lightning's rules for where checkpoints go,
and hands it to Lightning as an explicit ``ckpt_path``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from jepa_lightning.checkpointing import CheckpointError, check_config_fits, read_checkpoint
from jepa_lightning.evaluation.pretrained import import_class


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """``obj[key]`` for dicts and jsonargparse namespaces, ``default`` when absent or None."""
    if obj is None:
        return default
    value = obj.get(key) if hasattr(obj, "get") else getattr(obj, key, None)
    return default if value is None else value


def _is_model_checkpoint(callback: Any) -> bool:
    if isinstance(callback, ModelCheckpoint):
        return True
    try:
        return issubclass(import_class(str(_get(callback, "class_path", ""))), ModelCheckpoint)
    except (ImportError, AttributeError, ValueError, TypeError):
        return False


def checkpoint_folders(trainer: Any) -> list[Path]:
    """The folders a fit configured by ``trainer`` (the parsed ``trainer`` section) writes its
    checkpoints to, over all logger versions, and ``<default_root_dir>/checkpoints`` (where
    :class:`~jepa_lightning.PreemptionCheckpoint` writes when there is no ``ModelCheckpoint``)."""
    root = Path(_get(trainer, "default_root_dir", os.getcwd()))
    logger = _get(trainer, "logger", True)
    if isinstance(logger, list):
        logger = logger[0] if logger else False
    if logger is True:  # Lightning's default logger: <default_root_dir>/lightning_logs/version_n
        logger_dirs = list(root.glob("lightning_logs/*/checkpoints"))
    elif logger is False:
        logger_dirs = []
    else:
        args = _get(logger, "init_args", {})
        save_dir = Path(_get(args, "save_dir", root))
        logger_dirs = list((save_dir / str(_get(args, "name", ""))).glob("*/checkpoints"))
    callbacks = _get(trainer, "callbacks", [])
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    savers = [c for c in callbacks if _is_model_checkpoint(c)]
    if not savers and _get(trainer, "enable_checkpointing", True):
        savers = [{}]  # Lightning adds a ModelCheckpoint without a dirpath
    folders: list[Path] = []
    for saver in savers:
        dirpath = _get(_get(saver, "init_args", {}), "dirpath") or _get(saver, "dirpath")
        if dirpath is not None:
            folders.append(Path(dirpath))
        elif logger is not False:
            folders += sorted(logger_dirs)
        else:
            folders.append(root / "checkpoints")
    return list(dict.fromkeys([*folders, root / "checkpoints"]))


def _candidates(folders: Iterable[Path], root: Path) -> list[Path]:
    """Checkpoint files in ``folders`` and SLURM's ``hpc_ckpt_<n>.ckpt`` in ``root``, newest
    first (hidden partial writes excluded)."""
    found = {p for f in folders for p in f.glob("[!.]*.ckpt")} | set(root.glob("hpc_ckpt_*.ckpt"))
    files = [p for p in found if p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def _say(message: str) -> None:
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]
        print(f"jepa-lightning: resume: auto: {message}", file=sys.stderr, flush=True)


def resolve_last(trainer: Any, model: Any) -> str | None:
    """The newest good checkpoint of the run configured by ``trainer`` (parsed ``trainer``
    section), or ``None`` for a fresh run; one line on stderr (rank 0) says which.

    Args:
        trainer: The config's ``trainer`` section.
        model: The config's ``model`` section (``class_path``/``init_args``), to refuse a
            checkpoint of another method or architecture.

    Raises:
        CheckpointError: The newest readable checkpoint was written for another method class or
            architecture than ``model``.
    """
    folders = checkpoint_folders(trainer)
    root = Path(_get(trainer, "default_root_dir", os.getcwd())).absolute()
    folders = [f.absolute() for f in folders]
    for path in _candidates(folders, root):
        try:
            checkpoint = read_checkpoint(path, weights_only=True, mmap=True)
        except CheckpointError as err:
            _say(f"skipping {path}: {err}")
            continue
        if "optimizer_states" not in checkpoint or "loops" not in checkpoint:
            _say(f"skipping {path}: it holds weights only, not a training state to resume.")
            continue
        check_config_fits(checkpoint, path, model)
        step, epoch = checkpoint.get("global_step"), checkpoint.get("epoch")
        _say(f"resuming from {path} (step {step}, epoch {epoch}): the newest of this run.")
        return str(path)
    where = ", ".join(str(f) for f in [*folders, root / "hpc_ckpt_*.ckpt"])
    _say(f"no checkpoint of this run (looked in {where}): starting a fresh run.")
    return None
