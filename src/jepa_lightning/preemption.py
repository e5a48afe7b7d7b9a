"""Preemption: on SIGTERM or SIGUSR1, finish the optimiser step, checkpoint it, stop, and say so.

Clusters end a job with SIGTERM (Kubernetes, ``scancel``, a preempting job) or, under SLURM with
``--signal=SIGUSR1@120``, warn it with SIGUSR1 before the time limit. :class:`PreemptionCheckpoint`
turns either signal, on any rank, into the same ending on every rank: the step in progress
completes, every rank agrees on it, one checkpoint of exactly that step is written (atomically
by the CLI's :class:`~jepa_lightning.checkpointing.AtomicCheckpointIO`), and :class:`Preempted`
is raised: the CLI exits with status :data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``: "try
again later") and a last line naming the signal, the step and the file. Under SLURM with
auto-requeue (Lightning's ``SLURMEnvironment``, the default there) the requeue signal takes
Lightning's own path — log finalisation, ``hpc_ckpt_<n>.ckpt`` in ``default_root_dir``,
``scontrol requeue`` from rank 0 — only at the step boundary instead of inside the handler.

NOTE: what Lightning 2.6 does by itself, and why this replaces its signal handling during fit:

* SIGTERM outside SLURM sets ``trainer.received_sigterm`` and the loops raise
  ``SIGTERMException`` at the next step boundary: **no checkpoint**, and since that is a
  ``SystemExit`` without a code the process exits with status 0, as if training had finished.
  Its handler also calls ``dist.broadcast`` from inside the signal handler, a collective that
  the other ranks are not in at that moment.
* SIGUSR1 outside SLURM has no handler: the default action kills the process at once.
* Under SLURM, SIGUSR1's handler saves the checkpoint *inside the handler*, i.e. wherever the
  main thread was — possibly between ``backward`` and ``optimizer.step`` — and its
  ``save_checkpoint`` barrier then meets whatever collective the other ranks are in; the job
  then trains on until SLURM kills it.

Here the handlers only record the signal (a Python signal handler runs between bytecodes of
the main thread, so anything more would run mid-step); the callback acts in
``on_train_batch_end``, where the optimiser step is complete and Lightning's own
``ModelCheckpoint`` saves, so a resume from the file is exact as it is from ``last.ckpt``.
A signal that arrives during validation or an epoch-end monitor is acted on after the next
training step; one after the last training step lets the run finish.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose, _SignalConnector
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

#: Exit status of a preempted ``jepa-lightning fit`` (``EX_TEMPFAIL`` of ``sysexits.h``).
PREEMPTED_EXIT_CODE = 75

#: Checkpoint name when no ``ModelCheckpoint(save_last=True)`` gives a ``last.ckpt`` to write.
PREEMPTED_NAME = "preempted.ckpt"


def ignore_preemption_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` for DataLoader workers: survive a SIGTERM or SIGUSR1 meant for the job.

    SLURM signals every process of a job step, DataLoader workers included (``kill`` of a
    process group does the same). PyTorch's worker re-raises a SIGTERM that does not come from
    its parent, and SIGUSR1's default action ends a worker; either way the training process
    then fails ("DataLoader worker ... is killed by signal") instead of finishing its step and
    saving. Here a worker ignores SIGUSR1, and a thread takes SIGTERM: from the parent (the
    DataLoader ending a stuck worker) it exits as PyTorch's own handler does, from anyone
    else it is ignored — the training process decides when its workers end. The DataModules of
    :mod:`jepa_lightning.data` use it; pass it to your own ``DataLoader(worker_init_fn=...)``.
    """
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # e.g. macOS, Windows: PyTorch's behaviour
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later too

    def watch() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)

    threading.Thread(target=watch, name="sigterm-from-parent", daemon=True).start()


class Preempted(SIGTERMException):
    """Raised on every rank after the preemption checkpoint is written.

    A ``SystemExit`` (Lightning's ``SIGTERMException``, so callbacks that handle that one see it
    too) whose ``code`` is :data:`PREEMPTED_EXIT_CODE` — or 0 on ranks that Lightning's own
    launcher started, so that its child-process watcher does not SIGKILL rank 0 while rank 0
    finishes; the job's status is rank 0's.

    Attributes:
        message: One line naming the signal, the step, the checkpoint and what to do next.
        checkpoint: The file written.
        step: The global step saved.
        launched: The rank processes this one launched (Lightning's launcher, rank 0), which
            end by themselves; wait for them before exiting.
    """

    def __init__(
        self, message: str, checkpoint: str, step: int, code: int, launched: list[Any] | None = None
    ) -> None:
        super().__init__(code)
        self.message, self.checkpoint, self.step = message, checkpoint, step
        self.launched = launched or []

    def __str__(self) -> str:
        return self.message


class _PreemptionSignals(_SignalConnector):
    """Lightning's signal connector, with handlers that only record SIGTERM and the requeue
    signal (SIGUSR1, or SLURM's ``requeue_signal``); :class:`PreemptionCheckpoint` acts on them.
    Lightning calls ``register_signal_handlers`` before training and ``teardown`` (which
    restores the previous handlers) after it."""

    def __init__(self, trainer: pl.Trainer) -> None:
        super().__init__(trainer)
        self.requested: int | None = None

    @property
    def environment(self) -> Any:
        return self.trainer._accelerator_connector.cluster_environment

    @property
    def requeue_signal(self) -> signal.Signals | None:
        env = self.environment
        if isinstance(env, SLURMEnvironment):
            return env.requeue_signal
        return getattr(signal, "SIGUSR1", None)  # None on Windows

    @property
    def slurm_requeue(self) -> bool:
        env = self.environment
        return isinstance(env, SLURMEnvironment) and env.auto_requeue

    def register_signal_handlers(self) -> None:
        self.received_sigterm = False
        self.requested = None
        self._original_handlers = self._get_current_signal_handlers()
        for signum in {signal.SIGTERM, self.requeue_signal} - {None}:
            previous = signal.getsignal(signum)  # a user's own handler runs too, as in Lightning
            chained = [self._note, previous] if callable(previous) else [self._note]
            self._register_signal(signum, _HandlersCompose(chained))  # type: ignore[arg-type]

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is None:
            self.requested = signum


class PreemptionCheckpoint(Checkpoint):
    """On SIGTERM or SIGUSR1 to any rank, end the run on every rank after the current optimiser
    step with one checkpoint of that step, then raise :class:`Preempted` (see module docstring).

    Where the checkpoint goes: under SLURM with auto-requeue, for the requeue signal,
    Lightning's ``hpc_ckpt_<n>.ckpt`` in ``default_root_dir`` (and the job is requeued);
    otherwise ``last.ckpt`` of the first ``ModelCheckpoint(save_last=True)``, or
    ``preempted.ckpt`` in that callback's folder (``default_root_dir/checkpoints`` without one).
    ``jepa-lightning`` adds this callback to every run; ``resume: auto`` in a config resumes
    from the newest of these files (:mod:`jepa_lightning.resume`).

    Cost under DDP: one all-reduce of one number per optimiser step (Lightning broadcasts its own
    SIGTERM flag every step too). Single process: none. With gradient accumulation it acts only
    after a batch that stepped the optimiser.

    NOTE: it is a ``Checkpoint`` so that Lightning runs it after every other callback — the
    model's own (the EMA schedule) included — and the file holds the whole step. For the same
    reason, given to a ``Trainer`` without a ``ModelCheckpoint`` it stops Lightning from adding
    its default one (add one yourself), and ``enable_checkpointing=False`` refuses it;
    ``jepa-lightning`` adds it after the trainer is built, so neither applies there.

    Example:
        >>> import lightning.pytorch as pl
        >>> from jepa_lightning import PreemptionCheckpoint
        >>> trainer = pl.Trainer(callbacks=[PreemptionCheckpoint()], logger=False)
    """

    def __init__(self) -> None:
        self._signals: _PreemptionSignals | None = None
        self._checked_step = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Swap in the recording signal handlers for ``fit`` (before Lightning installs its own).

        NOTE: ``Trainer._signal_connector`` is private; Lightning has no public hook to change
        what a signal does during fit, and this is the object it asks to install the handlers.
        """
        if stage == "fit" and not isinstance(trainer._signal_connector, _PreemptionSignals):
            trainer._signal_connector = _PreemptionSignals(trainer)
        if isinstance(trainer._signal_connector, _PreemptionSignals):
            self._signals = trainer._signal_connector

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        """If any rank got a signal: save this step and raise :class:`Preempted`."""
        if trainer.global_step == self._checked_step:  # accumulating: no optimiser step yet
            return
        self._checked_step = trainer.global_step  # the same on every rank: all check, or none
        signum = self._agreed_signal(trainer)
        if signum is not None:
            self._stop(trainer, signum)

    def _agreed_signal(self, trainer: pl.Trainer) -> int | None:
        """The signal some rank received, the same on every rank (the requeue signal wins)."""
        if self._signals is None:
            return None
        requested, requeue = self._signals.requested, self._signals.requeue_signal
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            code = 0 if requested is None else 2 if requested == requeue else 1
            flag = torch.tensor([code], device=trainer.strategy.root_device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            code = int(flag.item())
            return None if code == 0 else int(requeue) if code == 2 else int(signal.SIGTERM)
        return requested

    def _stop(self, trainer: pl.Trainer, signum: int) -> None:
        assert self._signals is not None
        name, step, epoch = signal.Signals(signum).name, trainer.global_step, trainer.current_epoch
        rank_zero_info(f"Preempted by {name}: saving a checkpoint of step {step}, then stopping.")
        if self._signals.slurm_requeue and signum == self._signals.requeue_signal:
            # Lightning's requeue path: finalise loggers, save hpc_ckpt_<n>.ckpt, requeue (rank 0).
            self._signals._slurm_sigusr_handler_fn(signum, None)  # type: ignore[arg-type]
            path = str(trainer._checkpoint_connector._hpc_resume_path)
            job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID", "?")
            requeued = f" and asked SLURM to requeue job {job}; the requeued job resumes from it"
        else:
            path = self._save(trainer)
            requeued = "; run the same command to resume from it"
        message = (
            f"jepa-lightning: preempted by {name}: stopped after step {step} (epoch {epoch}), "
            f"saved it to {path}{requeued} (exit status {PREEMPTED_EXIT_CODE})."
        )
        by_lightning = isinstance(self._signals.environment, LightningEnvironment)
        code = 0 if by_lightning and trainer.local_rank > 0 else PREEMPTED_EXIT_CODE
        procs = list(getattr(trainer.strategy.launcher, "procs", []))  # rank 0's launched ranks
        raise Preempted(message, path, step, code, procs)

    @staticmethod
    def _save(trainer: pl.Trainer) -> str:
        """Write this step's checkpoint (collectively) and return its path."""
        savers = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        saver = savers[0] if savers else None
        if saver is not None and saver.save_last is True and saver.dirpath:
            if saver._last_global_step_saved == trainer.global_step and saver.last_model_path:
                return saver.last_model_path  # it saved this very step already
            # NOTE: private, but the only way to write ModelCheckpoint's last.ckpt with its own
            # name and bookkeeping (last_model_path, loggers told), as its own saves do.
            saver._save_last_checkpoint(trainer, saver._monitor_candidates(trainer))
            return saver.last_model_path
        folder = saver.dirpath if saver is not None and saver.dirpath else None
        path = Path(folder or Path(trainer.default_root_dir) / "checkpoints") / PREEMPTED_NAME
        trainer.save_checkpoint(path)
        return str(path)
