"""The ``jepa-lightning`` command: a LightningCLI over every JEPA module, the evaluation modules
(linear, k-NN, fine-tuning) and the DataModules."""

from __future__ import annotations

import subprocess
import sys
import traceback
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_only

import jepa_lightning.evaluation  # noqa: F401  (registers the evaluation modules as subclasses)
from jepa_lightning import faults
from jepa_lightning.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointSpaceError,
    check_config_fits,
    check_fits,
    read_checkpoint,
)
from jepa_lightning.data.datamodule import SSLDataModule
from jepa_lightning.faults import DistributedFailureReport
from jepa_lightning.precision import cpu_precision_fallback
from jepa_lightning.preemption import Preempted, PreemptionCheckpoint
from jepa_lightning.resume import resolve_last


class JEPACLI(LightningCLI):
    """LightningCLI in subclass mode for model and data, with shared values linked once."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Say each value once: the DataModule owns the image size. Every module run through
        # this CLI (pretraining and evaluation) therefore takes an ``image_size`` argument.
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size")
        # NOTE: an option of its own rather than ``ckpt_path: last`` in the configs: a config
        # read after ``--ckpt_path FILE`` on the command line would replace FILE by ``last``.
        parser.add_argument(
            "--resume",
            type=Literal["auto", "never"],
            default="never",
            help="fit: 'auto' resumes from the newest good checkpoint of this run (or starts a "
            "fresh run if there is none) unless --ckpt_path is given; see jepa_lightning.resume.",
        )

    def before_instantiate_classes(self) -> None:
        """bf16 resolved to a CPU without native bf16 runs in 32-bit, with one warning (see
        :mod:`jepa_lightning.precision`; ``JEPA_FORCE_CPU_BF16=1`` keeps bf16). The config is
        changed before the trainer is built, so the saved ``config.yaml`` says what ran."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        fallback = cpu_precision_fallback(trainer.accelerator, trainer.precision)
        if fallback is not None:
            trainer.precision = fallback

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """The trainer, writing checkpoints atomically (:class:`AtomicCheckpointIO`, unless a
        ``CheckpointIO`` plugin was given), reporting lost ranks
        (:class:`DistributedFailureReport`) and stopping with a checkpoint on SIGTERM/SIGUSR1
        (:class:`PreemptionCheckpoint`)."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        for kind in (DistributedFailureReport, PreemptionCheckpoint):
            if not any(isinstance(c, kind) for c in trainer.callbacks):
                trainer.callbacks.append(kind())
        return trainer

    def _ckpt_path(self) -> str | None:
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path is None or str(path) in ("last", "best", "hpc", "registry") or "://" in str(path):
            return None
        return str(path)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse; for ``fit`` with ``resume: auto`` and no ``--ckpt_path``, take the newest good
        checkpoint of the run (:func:`~jepa_lightning.resume.resolve_last`). Then check
        ``--ckpt_path`` before LightningCLI merges the checkpoint's hyper-parameters into the
        config (which would silently swap the config's model for the checkpoint's): one sentence
        naming the file if it is not a readable checkpoint, or was trained with another method
        class or architecture than the config asks for."""
        super().parse_arguments(parser, args)
        fit = self.config.get("fit") if self.config.get("subcommand") == "fit" else None
        if fit is not None and fit.get("resume") == "auto" and fit.get("ckpt_path") is None:
            # The newest good checkpoint of this run, or None (see jepa_lightning.resume).
            fit.ckpt_path = resolve_last(fit.get("trainer"), fit.get("model"))
        path = self._ckpt_path()
        if path is not None:
            checkpoint = read_checkpoint(path, weights_only=True, mmap=True)
            model = self.config[self.config["subcommand"]].get("model")
            check_config_fits(checkpoint, path, model)

    def _check_ckpt_path(self) -> None:
        """Fail before training, with one sentence naming the file, if ``--ckpt_path``'s tensors
        do not fit the model (nothing is written before this check)."""
        path = self._ckpt_path()
        if path is not None:
            check_fits(read_checkpoint(path, weights_only=True, mmap=True), path, self.model)

    def before_fit(self) -> None:
        """Check ``--ckpt_path``."""
        self._check_ckpt_path()

    def before_validate(self) -> None:
        """Check ``--ckpt_path``."""
        self._check_ckpt_path()

    def before_test(self) -> None:
        """Check ``--ckpt_path``."""
        self._check_ckpt_path()

    def before_predict(self) -> None:
        """Check ``--ckpt_path``."""
        self._check_ckpt_path()


def main(args: list[str] | None = None, run: bool = True) -> JEPACLI:
    """Entry point of ``jepa-lightning``; pass ``args`` to call it from Python or tests.
    ``run=False`` only builds the trainer, model and DataModule (``args`` without a subcommand)."""
    return JEPACLI(
        pl.LightningModule,
        SSLDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
    )


def run() -> None:
    """Console-script entry point (``jepa-lightning``): exit status 0 on success; 1 with one
    line on stderr for an unusable checkpoint, a full checkpoint folder or a lost rank; 75
    (:data:`~jepa_lightning.preemption.PREEMPTED_EXIT_CODE`) with one line naming the signal,
    step and checkpoint after SIGTERM or SIGUSR1 (:class:`PreemptionCheckpoint`)."""
    try:
        main()
    except Preempted as stop:
        for proc in stop.launched:  # rank 0 of Lightning's launcher: the job ends with its ranks
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if rank_zero_only.rank == 0:  # type: ignore[attr-defined]
            print(stop.message, file=sys.stderr, flush=True)
        sys.exit(stop.code)
    except (CheckpointError, CheckpointSpaceError) as err:
        sys.exit(f"jepa-lightning: error: {err}")
    except Exception:
        if faults.last_report is None:
            raise
        traceback.print_exc()
        sys.exit(f"jepa-lightning: error: {faults.last_report}")


if __name__ == "__main__":
    run()
