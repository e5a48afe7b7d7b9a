"""Checkpoint files that survive faults: atomic writes, a clear error on a full disk, and clear
errors for damaged or foreign checkpoints.

* :class:`AtomicCheckpointIO` writes a checkpoint to a hidden temporary file in the target's
  folder, flushes it to the device (``fsync``), renames it over the target (``os.replace``, atomic
  on POSIX) and syncs the folder. A process killed at any point leaves either the previous file or
  the new one, never a partial one under the checkpoint's name. ``jepa-lightning`` uses it unless
  another ``CheckpointIO`` plugin is given.
* A write that fails for lack of space raises :class:`CheckpointSpaceError`, naming the folder, the
  checkpoint's size and the free space; the previous checkpoint is untouched.
* :func:`read_checkpoint` and :func:`check_fits` turn a truncated file, a file that is not a
  checkpoint, or a checkpoint of another method or backbone into one :class:`CheckpointError`
  sentence naming the file, instead of an unpickling or ``load_state_dict`` traceback.

NOTE: Lightning's own write (``lightning.fabric.utilities.cloud_io._atomic_save``) serialises to
memory and lets fsspec write a temporary file in the *system* temp folder, then
``shutil.move`` it. Across filesystems (``/tmp`` on tmpfs, checkpoints on a disk or NFS) that move
is a copy into the checkpoint's own name, so a kill during it leaves a truncated ``last.ckpt``;
nothing is fsync'ed, and a killed writer leaves its temporary file in ``/tmp``.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _load
from torch import nn

_PARTIAL = ".partial"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: damaged, not a checkpoint, or for another model."""


class CheckpointSpaceError(OSError):
    """A checkpoint could not be written for lack of space (``errno.ENOSPC``)."""


class _CountingWriter:
    """A write-only sink that counts the bytes ``torch.save`` writes (a checkpoint's size)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to flush."""


def serialized_size(checkpoint: Any) -> int:
    """Size in bytes of ``checkpoint`` as ``torch.save`` writes it (nothing is stored)."""
    sink = _CountingWriter()
    torch.save(checkpoint, sink)  # type: ignore[arg-type]
    return sink.size


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def _out_of_space(err: BaseException | None) -> bool:
    """Whether ``err`` or an exception it chains is ENOSPC/EDQUOT (torch's archive writer
    reports a failed write as a ``RuntimeError`` whose context is the ``OSError``)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file under ``path``.

    Raises:
        CheckpointSpaceError: The folder's filesystem is full; ``path`` is as it was before.
    """
    target = Path(path)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{target.name}.{os.getpid()}{_PARTIAL}"
    try:
        with open(partial, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, target)
    except BaseException as err:
        partial.unlink(missing_ok=True)
        if _out_of_space(err):
            needed, free = serialized_size(obj), shutil.disk_usage(folder).free
            error = CheckpointSpaceError(
                f"Not enough space in {str(folder)!r} to write {target.name!r}: the checkpoint "
                f"needs about {_mb(needed)} ({needed} bytes) and {_mb(free)} are free. The "
                f"previous {target.name!r} (if any) is untouched; training stops here so it does "
                "not run on without checkpoints. Free space or point the checkpoint folder "
                "elsewhere, then resume with --ckpt_path."
            )
            error.errno = errno.ENOSPC
            raise error from err
        raise
    _fsync_dir(folder)
    for stale in folder.glob(f".{target.name}.*{_PARTIAL}"):  # left by a killed writer
        if not _pid_alive(stale.name.removesuffix(_PARTIAL).rpartition(".")[2]):
            stale.unlink(missing_ok=True)


def _pid_alive(pid: str) -> bool:
    """Whether process ``pid`` (a decimal string) exists on this machine."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` with atomic, fsync'ed local writes (see module docstring) and
    clear errors for unreadable checkpoints. Remote paths (``s3://``...) keep Lightning's write.

    Use it outside the CLI with ``Trainer(plugins=[AtomicCheckpointIO()])``.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically (local paths)."""
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options.")
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | Any | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Lightning's load, with a :class:`CheckpointError` naming the file when it is not a
        readable Lightning checkpoint."""
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only)
        return read_checkpoint(path, map_location=map_location, weights_only=weights_only)


def _what_it_is(path: Path) -> str:
    """Why a file that failed to load is not a checkpoint, from its first bytes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
    if size == 0:
        return "is empty (0 bytes)"
    if head.startswith(b"PK"):
        return f"is truncated or damaged (an incomplete PyTorch archive of {size} bytes)"
    if head[:1] == b"\x80":
        return f"is truncated or damaged (an unreadable pickle of {size} bytes)"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return f"is not a checkpoint but a text file (it starts with {head[:24].decode()!r})"
    return f"is not a PyTorch checkpoint (unknown format, {size} bytes)"


def read_checkpoint(
    path: str | Path,
    map_location: Any = "cpu",
    weights_only: bool | None = None,
    mmap: bool = False,
) -> dict[str, Any]:
    """``torch.load`` a Lightning checkpoint, or raise one :class:`CheckpointError` sentence.

    Args:
        path: The checkpoint file.
        map_location: As for ``torch.load``.
        weights_only: As for ``torch.load`` (``None``: Lightning's default).
        mmap: Memory-map the file (reads only what is used).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"Checkpoint {str(file)!r} does not exist.")
    try:
        if mmap:
            only = True if weights_only is None else weights_only
            ckpt = torch.load(file, map_location=map_location, weights_only=only, mmap=True)
        else:
            ckpt = _load(file, map_location=map_location, weights_only=weights_only)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError) as err:
        if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err):
            raise CheckpointError(
                f"Checkpoint {str(file)!r} holds Python objects that a weights-only load "
                "refuses; load it only if you trust its origin."
            ) from err
        raise CheckpointError(f"Checkpoint {str(file)!r} {_what_it_is(file)}.") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        kind = "a state dict of tensors" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"Checkpoint {str(file)!r} is not a Lightning checkpoint (it holds {kind}, no "
            "'state_dict'): e.g. an exported backbone, which loads into torchvision instead."
        )
    return ckpt


def _class_name(class_path: str) -> str:
    return class_path.rpartition(".")[2]


#: Hyper-parameters that change the shapes of a method's tensors.
ARCHITECTURE_KEYS = ("backbone", "arch", "depth", "patch_size", "small_images", "predictor_depth")


def check_config_fits(checkpoint: dict[str, Any], path: str | Path, model: Any) -> None:
    """Raise a :class:`CheckpointError` if ``checkpoint`` records another method class or
    architecture than a config's ``model`` (a ``class_path``/``init_args`` namespace or dict).

    Lightning's CLI would otherwise replace the config's values by the checkpoint's without a
    word; a disagreement on what the network is means the wrong config or the wrong file.
    """
    hparams = checkpoint.get("hyper_parameters") or {}
    if model is None or not hparams:
        return
    class_path, init_args = model.get("class_path"), dict(model.get("init_args") or {})
    theirs = hparams.get("_class_path")
    if theirs and class_path and _class_name(theirs) != _class_name(class_path):
        raise CheckpointError(
            f"Checkpoint {str(path)!r} is a {_class_name(theirs)} checkpoint ({theirs}), but "
            f"the config builds a {_class_name(class_path)}: use the config it was trained "
            "with (saved beside its logs as config.yaml)."
        )
    differs = [k for k in ARCHITECTURE_KEYS if k in hparams and k in init_args
               and hparams[k] != init_args[k]]  # fmt: skip
    if differs:
        said = ", ".join(f"{k}={hparams[k]!r} (config: {init_args[k]!r})" for k in differs)
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not fit the config's "
            f"{_class_name(class_path or 'model')}: it was trained with {said}; use the config "
            "it was trained with (saved beside its logs as config.yaml)."
        )


def check_fits(checkpoint: dict[str, Any], path: str | Path, model: nn.Module) -> None:
    """Raise a :class:`CheckpointError` if ``checkpoint`` (read from ``path``) was written for
    another method or architecture than ``model``: by the recorded class, then by the names and
    shapes of the tensors."""
    name = type(model).__name__
    hparams = checkpoint.get("hyper_parameters") or {}
    class_path = hparams.get("_class_path")
    if class_path and _class_name(class_path) != name:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} is a {_class_name(class_path)} checkpoint "
            f"({class_path}), but the config builds a {name}: use the matching config."
        )
    theirs: dict[str, Any] = checkpoint["state_dict"]
    ours = model.state_dict()
    own = getattr(model, "hparams", {})
    differs = [k for k in ARCHITECTURE_KEYS if k in hparams and k in own and hparams[k] != own[k]]
    settings = ", ".join(f"{k}={hparams[k]!r} (config: {own[k]!r})" for k in differs)
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    if missing or unexpected:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not fit the config's {name}: "
            + (f"it was trained with {settings}; " if settings else "")
            + f"{len(missing)} of the model's tensors are not in it (e.g. {missing[:1]}) and "
            f"{len(unexpected)} of its tensors are not in the model (e.g. {unexpected[:1]}), "
            "so it holds another method or backbone."
        )
    for key, value in ours.items():
        if tuple(theirs[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"Checkpoint {str(path)!r} does not fit the config's {name}: "
                + (f"it was trained with {settings}; " if settings else "")
                + f"{key!r} has shape {tuple(theirs[key].shape)} in it and "
                f"{tuple(value.shape)} in the model, so it holds another backbone."
            )
