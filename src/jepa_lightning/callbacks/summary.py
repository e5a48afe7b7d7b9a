"""A closing summary after ``fit``: where the run's files are, how it went, what to run next."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from jepa_lightning.callbacks.knn import KNNMonitor

#: The repository of an editable install (where ``configs/`` is), for configs named relative to it.
REPO = Path(__file__).resolve().parents[3]


def _value(x: Any) -> float | None:
    if isinstance(x, Tensor) and x.numel() == 1:
        return float(x)
    return float(x) if isinstance(x, (int, float)) else None


def _class_name(path: str | None) -> str:
    return (path or "").rsplit(".", 1)[-1]


def _class_path(cls: type) -> str:
    """``jepa_lightning.X`` for the package's exported classes, else ``module.X``."""
    import jepa_lightning

    if getattr(jepa_lightning, cls.__name__, None) is cls:
        return f"jepa_lightning.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


class FitSummary(Callback):
    """Prints a closing summary once ``fit`` ends: the checkpoint files (``ModelCheckpoint``'s
    last and best), the log directory, the first and last training loss (step values and epoch
    means), the first and last ``knn/top1`` of every :class:`KNNMonitor` that ran, and the next
    commands with the actual paths filled in: ``tensorboard --logdir``, one evaluation command
    per ``eval_configs`` entry (``--model.init_args.checkpoint <ckpt>``) and
    ``jepa-lightning-export <ckpt> backbone.pt`` for a module whose backbone exports to
    torchvision (``pl_module.exports_to_torchvision``, declared by
    :class:`~jepa_lightning.JEPAModule`).

    Quiet when the progress bar is off (``--trainer.enable_progress_bar false``), when logging
    is off (no logger), under ``fast_dev_run`` (nothing is saved) and on every rank but global
    rank 0. The losses are rank 0's own batches of this ``fit`` call (after a resume: from
    the resumed step on), kept as tensors during training and read once at the end (no host
    sync per step).

    Args:
        eval_configs: Evaluation configs to suggest (e.g. ``configs/eval/linear_digits.yaml``),
            in order. Configs whose model is a ``KNNEvaluation`` get ``validate``, the others
            ``fit``. When the run's DataModule has a ``root``, it is filled in (with an
            ImageFolder's split names), and ``--data <class>`` when the config names another
            DataModule class (e.g. a CIFAR-10 config after an ImageFolder run). Empty: a
            generic hint.
        loss_key: The logged training loss (its ``_epoch`` variant gives the epoch means).
        export: Print the ``jepa-lightning-export`` command: ``None`` asks the module
            (its ``exports_to_torchvision`` capability: ResNet backbones, not ViTs).

    Example:
        >>> import lightning.pytorch as pl
        >>> from jepa_lightning import FitSummary
        >>> summary = FitSummary(eval_configs=["configs/eval/linear_digits.yaml"])
        >>> trainer = pl.Trainer(callbacks=[summary], accelerator="cpu", logger=False)
        >>> # after trainer.fit(...): checkpoint and log paths, first/last loss and k-NN, and
        >>> # the evaluation command with the checkpoint filled in (summary.text keeps it)
    """

    def __init__(
        self,
        eval_configs: list[str] | None = None,
        loss_key: str = "train/loss",
        export: bool | None = None,
    ) -> None:
        self.eval_configs = list(eval_configs or [])
        self.loss_key = loss_key
        self.export = export
        self.losses: dict[str, Tensor] = {}  # first/last step, first/last epoch mean
        self.knn: dict[int, list[tuple[int, float]]] = {}  # id(monitor) -> [(epoch, top1)]
        self._knn_seen: dict[int, dict[str, float]] = {}
        self.text = ""
        """The summary last printed (empty when quiet)."""

    # ---------------------------------------------------------------- recording
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.losses, self.knn, self._knn_seen, self.text = {}, {}, {}, ""

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        metrics = trainer.callback_metrics
        loss = metrics.get(f"{self.loss_key}_step", metrics.get(self.loss_key))
        if isinstance(loss, Tensor):
            self.losses.setdefault("first_step", loss.detach().clone())
            self.losses["last_step"] = loss.detach().clone()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = trainer.callback_metrics.get(f"{self.loss_key}_epoch")
        if isinstance(loss, Tensor):
            self.losses.setdefault("first_epoch", loss.detach().clone())
            self.losses["last_epoch"] = loss.detach().clone()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After every callback's on_validation_epoch_end: each monitor's result of this epoch.
        for cb in trainer.callbacks:
            result = getattr(cb, "last_result", None)
            if isinstance(cb, KNNMonitor) and result and self._knn_seen.get(id(cb)) is not result:
                self._knn_seen[id(cb)] = result  # a new dict per k-NN run
                self.knn.setdefault(id(cb), []).append((trainer.current_epoch, result["top1"]))

    # ---------------------------------------------------------------- printing
    def quiet(self, trainer: pl.Trainer) -> bool:
        """True when nothing is printed (see the class docstring)."""
        return (
            not trainer.is_global_zero
            or trainer.progress_bar_callback is None
            or not trainer.loggers
            or bool(trainer.fast_dev_run)
        )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.quiet(trainer):
            return
        self.text = self.summary(trainer, pl_module)
        print(self.text, flush=True)

    def checkpoints(self, trainer: pl.Trainer) -> list[tuple[str, str]]:
        """``(label, path)`` of the existing last / best checkpoint files, last first."""
        found: list[tuple[str, str]] = []
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint):
                continue
            best = f"best by {cb.monitor}" if cb.monitor else "latest top-k"
            for label, path in (("last", cb.last_model_path), (best, cb.best_model_path)):
                if path and Path(path).is_file() and path not in {p for _, p in found}:
                    found.append((label, path))
        return found

    def summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        """The summary text (also usable when :meth:`quiet` is true)."""
        q = shlex.quote
        lines = [f"== jepa-lightning: fit finished after {trainer.global_step} optimiser steps =="]
        checkpoints = self.checkpoints(trainer)
        for label, path in checkpoints:
            lines.append(f"checkpoint ({label}): {path}")
        if not checkpoints:
            lines.append("checkpoint: none saved (no ModelCheckpoint, or checkpointing off)")
        tensorboard = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        for logger in trainer.loggers:
            if logger.log_dir:
                lines.append(f"logs ({type(logger).__name__}): {logger.log_dir}")
        lines += self._results()
        ckpt = checkpoints[0][1] if checkpoints else "path/to/last.ckpt"
        lines.append("next:")
        if tensorboard:
            lines.append(f"  tensorboard --logdir {q(str(tensorboard[0].log_dir))}")
        for command in self._eval_commands(trainer, ckpt):
            lines.append(f"  {command}")
        if self._exportable(pl_module):
            lines.append(f"  jepa-lightning-export {q(ckpt)} backbone.pt")
        return "\n".join(lines)

    def _results(self) -> list[str]:
        lines = []
        v = {k: _value(t) for k, t in self.losses.items()}
        if v.get("first_step") is not None and v.get("last_step") is not None:
            line = f"train loss: {v['first_step']:.4f} (first step) -> {v['last_step']:.4f} (last)"
            if v.get("first_epoch") is not None and v.get("last_epoch") is not None:
                line += f"; epoch mean {v['first_epoch']:.4f} -> {v['last_epoch']:.4f}"
            lines.append(line)
        for runs in self.knn.values():
            (e0, a0), (e1, a1) = runs[0], runs[-1]
            lines.append(f"k-NN top-1 (KNNMonitor): {a0:.4f} (epoch {e0}) -> {a1:.4f} (epoch {e1})")
        return lines

    def _eval_commands(self, trainer: pl.Trainer, ckpt: str) -> list[str]:
        q = shlex.quote
        if not self.eval_configs:
            return [
                "jepa-lightning fit --config configs/eval/<an evaluation config>.yaml "
                f"--model.init_args.checkpoint {q(ckpt)}"
            ]
        data = trainer.datamodule
        commands = []
        for config in self.eval_configs:
            path = Path(config)
            if not path.is_file() and (REPO / config).is_file():  # run from another folder
                path = REPO / config
                config = str(path)
            try:
                spec = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError):
                spec = {}
            model = _class_name(spec.get("model", {}).get("class_path"))
            subcommand = "validate" if model == "KNNEvaluation" else "fit"
            command = f"jepa-lightning {subcommand} --config {q(config)}"
            root = getattr(data, "root", None)
            if root is not None:  # evaluate on the data the run was trained on
                if _class_name(spec.get("data", {}).get("class_path")) != type(data).__name__:
                    command += f" --data {_class_path(type(data))}"
                command += f" --data.init_args.root {q(str(root))}"
                for key in ("train_split", "val_split"):  # an ImageFolder's folder names
                    if getattr(data, key, None) is not None:
                        command += f" --data.init_args.{key} {q(str(getattr(data, key)))}"
            commands.append(f"{command} --model.init_args.checkpoint {q(ckpt)}")
        return commands

    def _exportable(self, pl_module: pl.LightningModule) -> bool:
        if self.export is not None:
            return self.export
        # NOTE: read the capability, not the class: callbacks know only the base class's API.
        return bool(getattr(pl_module, "exports_to_torchvision", False))
