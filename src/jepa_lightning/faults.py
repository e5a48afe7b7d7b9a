"""When a distributed run fails: name the process that is gone and leave no process behind.

Lightning 2.6 under ``strategy="ddp"`` with its own launcher (one machine): when a rank dies, the
others fail in their next collective ("Connection reset by peer", no rank named) or are
SIGKILLed by Lightning's child-process observer within 5 s. A rank that is *alive but stuck*
(stopped, deadlocked, blocked on I/O) is only noticed when a collective times out —
``DDPStrategy(timeout=...)``, 30 minutes by default — and then the failing rank exits while the
stuck one stays forever. :class:`DistributedFailureReport` closes both gaps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.callbacks import Callback

from jepa_lightning.preemption import Preempted

#: The last failure :class:`DistributedFailureReport` reported in this process (for the CLI's
#: final line), or ``None``.
last_report: str | None = None


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _state(pid: int) -> str:
    """The Linux process state letter of ``pid`` (``T``: stopped), or ``?``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


class DistributedFailureReport(Callback):
    """On an exception in a multi-process run, say which ranks are gone (exit status or signal)
    or stuck, and end the processes this one launched, so the whole job exits.

    Rank 0 of Lightning's own launcher (one machine, ``strategy="ddp"``) knows its child ranks and
    reports them; a child rank reports a lost rank 0 (its parent). Under ``torchrun`` or SLURM the
    launcher reports and ends failed ranks itself. ``jepa-lightning`` adds this callback to every
    run.

    Args:
        grace_s: How long to wait for launched ranks to finish dying before judging them.
    """

    def __init__(self, grace_s: float = 2.0) -> None:
        self.grace_s = grace_s
        self._parent: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remember the parent process (rank 0, for a rank Lightning launched)."""
        self._parent = os.getppid()

    def _parent_gone(self, deadline: float) -> bool:
        """Whether the parent process has died, waiting until ``deadline`` for the sign of it: a
        peer sees rank 0's sockets close (and fails) while the kernel is still tearing rank 0
        down, a moment before this process is re-parented."""
        assert self._parent is not None
        while True:
            if os.getppid() != self._parent or _state(self._parent) in ("Z", "X"):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def lost_ranks(self, trainer: pl.Trainer) -> list[str]:
        """One phrase per rank that is gone or stuck, as far as this process can tell."""
        first = trainer.node_rank * trainer.num_devices
        found = []
        deadline = time.monotonic() + self.grace_s
        for local, proc in enumerate(getattr(trainer.strategy.launcher, "procs", []), start=1):
            try:  # a rank that just died may not be reaped yet when its peers notice
                code = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = None
            if code not in (None, 0):
                found.append(f"rank {first + local} (pid {proc.pid}) {_exit_reason(code)}")
            elif code is None and _state(proc.pid) == "T":
                found.append(f"rank {first + local} (pid {proc.pid}) is stopped and not answering")
        if trainer.local_rank != 0 and self._parent is not None and self._parent_gone(deadline):
            env = getattr(trainer.strategy, "cluster_environment", None)
            if isinstance(env, LightningEnvironment):  # Lightning's launcher: the parent is rank 0
                found.append(f"rank {first} (pid {self._parent}, which launched this one) is gone")
            else:  # e.g. torchrun's agent
                found.append(f"the process that launched this one (pid {self._parent}) is gone")
        return found

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Report lost ranks on stderr, then SIGKILL the ranks this process launched. A
        preemption (:class:`~jepa_lightning.preemption.Preempted`) is not a failure: every rank
        is stopping by itself after the same checkpoint."""
        if trainer.world_size < 2 or isinstance(exception, Preempted):
            return
        lost = self.lost_ranks(trainer)
        rank = trainer.global_rank
        if lost:
            global last_report
            last_report = (
                f"[rank {rank}] Distributed training failed because {'; '.join(lost)} "
                f"({type(exception).__name__}). Resume from the last checkpoint: rerun the same "
                "command (with resume: auto) or give --ckpt_path."
            )
            print(last_report, file=sys.stderr, flush=True)
        for proc in getattr(trainer.strategy.launcher, "procs", []):
            if proc.poll() is None:
                print(f"[rank {rank}] Ending launched process {proc.pid}.", file=sys.stderr)
                proc.kill()
                proc.wait()
