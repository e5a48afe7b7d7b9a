"""Preempted, requeued, resumed: SIGTERM and SIGUSR1 sent to a running ``jepa-lightning fit``.

Each run is the quickstart config, tiny (digits at 32 px, ResNet-18, batch 4, one epoch of 10
steps, ``ModelCheckpoint(every_n_train_steps=3, save_last=True)``), one thread per process, and
the config's own ``resume: auto``: the *identical* command is run again after the signal.
``StepRecorder`` appends one JSON line per step and writes a digest of every weight and buffer
when fit ends. The signal is sent from outside once a few steps are recorded, so it lands
wherever the process is: forward, backward, optimizer step, or the periodic checkpoint write.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tests" / "scripts"
QUICKSTART = REPO / "configs" / "quickstart.yaml"
STEPS = 10
EXIT_PREEMPTED = 75  # jepa_lightning.preemption.PREEMPTED_EXIT_CODE, as documented
FAKE_SLURM = {
    "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "jepa-test", "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
}  # fmt: skip


def _args(out: Path, *extra: str, devices: int = 1, workers: int = 0) -> list[str]:
    """The command: the same for a first run and for its rerun (no --ckpt_path: the config's
    ``resume: auto`` decides)."""
    ckpt = {"dirpath": str(out / "ckpt"), "every_n_train_steps": 3, "save_last": True}
    ckpt["save_top_k"] = 0  # last.ckpt only
    callback = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": ckpt}
    args = ["fit", "--config", str(QUICKSTART), "--trainer.logger", "false"]
    args += ["--trainer.callbacks", json.dumps([callback])]
    args += ["--trainer.callbacks+=fault_callbacks.StepRecorder"]
    args += ["--trainer.callbacks.out", str(out), "--trainer.callbacks.tag", "run"]
    args += ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(STEPS)]
    args += ["--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.enable_model_summary", "false", "--trainer.deterministic", "true"]
    args += ["--data.init_args.batch_size", "4", "--trainer.default_root_dir", str(out)]
    args += ["--data.init_args.num_workers", str(workers)]
    if devices > 1:
        args += ["--trainer.devices", str(devices), "--trainer.strategy", "ddp"]
    return args + list(extra)


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
            **extra}  # fmt: skip


def _popen(out: Path, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start the CLI in its own process group (as a batch job is), stderr to a new file."""
    out.mkdir(parents=True, exist_ok=True)
    stderr = (out / f"stderr_{len(list(out.glob('stderr_*')))}").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "jepa_lightning.cli", *args], cwd=out, env=env or _env(),
        text=True, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
    )  # fmt: skip


def _stderr(out: Path) -> str:
    return sorted(out.glob("stderr_*"), key=lambda p: int(p.name.split("_")[1]))[-1].read_text()


def _run(out: Path, args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    code = _popen(out, args, env).wait(300)
    return code, _stderr(out)


def _steps(out: Path, rank: int = 0) -> list[dict[str, Any]]:
    path = out / f"steps_run_rank{rank}.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []  # whole lines only
    return [json.loads(line) for line in lines]


def _final(out: Path, rank: int = 0) -> dict[str, Any]:
    return json.loads((out / f"final_run_rank{rank}.json").read_text())


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.002)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _pid(out: Path, rank: int) -> int:
    return int((out / f"pid_run_rank{rank}").read_text())


def _global_step(path: Path) -> int:
    return int(torch.load(path, weights_only=False, mmap=True)["global_step"])


def _interrupt(
    out: Path, args: list[str], send: Callable[[subprocess.Popen[str]], None], after: int = 2,
    env: dict[str, str] | None = None,
) -> tuple[int, str, list[dict[str, Any]]]:  # fmt: skip
    """Start ``args``, call ``send(proc)`` once ``after`` more steps are recorded; the exit
    status, stderr and the steps recorded by this run."""
    before = len(_steps(out))
    proc = _popen(out, args, env)
    _wait_for(lambda: len(_steps(out)) >= before + after, 240, f"step {before + after}")
    sent = time.monotonic()
    send(proc)
    code = proc.wait(120)
    print(f"exit status {code} {time.monotonic() - sent:.1f} s after the signal")
    return code, _stderr(out), _steps(out)[before:]


def _preempted_line(stderr: str, name: str, step: int, path: Path, requeued: str = "") -> None:
    """The last line says it was preempted, by what, at which step, where the checkpoint is."""
    what = requeued or "; run the same command to resume from it"
    expected = (f"jepa-lightning: preempted by {name}: stopped after step {step} (epoch 0), "
                f"saved it to {path}{what} (exit status {EXIT_PREEMPTED}).")  # fmt: skip
    assert stderr.strip().splitlines()[-1] == expected, stderr[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same command, never interrupted."""
    out = tmp_path_factory.mktemp("reference")
    code, err = _run(out, _args(out, workers=1))
    assert code == 0, err[-3000:]
    assert "starting a fresh run" in err
    assert [r["step"] for r in _steps(out)] == list(range(1, STEPS + 1))
    return out


def _assert_same_run(out: Path, reference: Path, ranks: int = 1) -> None:
    """Bit for bit: every step's loss, lr, epoch and batch index, and every final weight and
    buffer (EMA target, BatchNorm statistics, probe), on every rank."""
    for rank in range(ranks):
        assert _steps(out, rank) == _steps(reference, rank)
        assert _final(out, rank) == _final(reference, rank)


@pytest.mark.slow
def test_sigterm_then_sigusr1_save_the_step_reached_and_the_same_command_resumes_exactly(
    tmp_path: Path, reference: Path
) -> None:
    """One process, outside SLURM. SIGTERM to the whole process group (the training process and
    its DataLoader worker, as SLURM signals every process of a job step); then, in the rerun of
    the identical command, SIGUSR1 to the training process only (as Kubernetes signals PID 1).
    Each time: exit 75 after a checkpoint of exactly the last step recorded, and the last line
    says so. The third run of the command resumes from the second checkpoint, saying so, and
    ends bit for bit where the uninterrupted run ends."""
    out = tmp_path
    args = _args(out, workers=1)

    def sigterm_group(proc: subprocess.Popen[str]) -> None:
        os.killpg(proc.pid, signal.SIGTERM)

    def sigusr1_main(proc: subprocess.Popen[str]) -> None:
        os.kill(proc.pid, signal.SIGUSR1)

    last = out / "ckpt" / "last.ckpt"
    reached = [0]
    for send, name in ((sigterm_group, "SIGTERM"), (sigusr1_main, "SIGUSR1")):
        code, err, steps = _interrupt(out, args, send)
        assert code == EXIT_PREEMPTED, err[-3000:]
        assert steps[0]["step"] == reached[-1] + 1  # a rerun resumes where the last one stopped
        reached.append(steps[-1]["step"])
        assert _global_step(last) == reached[-1]  # a checkpoint of exactly the step reached
        _preempted_line(err, name, reached[-1], last)
        assert [p.name for p in (out / "ckpt").iterdir()] == ["last.ckpt"]  # no partial file
    assert reached[2] < STEPS, reached  # both stopped mid-epoch

    code, err = _run(out, args)
    assert code == 0, err[-3000:]
    assert f"jepa-lightning: resume: auto: resuming from {last} (step {reached[2]}, epoch 0)" in err
    assert [r["step"] for r in _steps(out)] == list(range(1, STEPS + 1))
    _assert_same_run(out, reference)


@pytest.mark.slow
def test_sigusr1_under_slurm_takes_lightnings_requeue_path_and_the_requeued_job_resumes(
    tmp_path: Path, reference: Path
) -> None:
    """A fake SLURM job (SLURM's environment variables, ``scontrol`` a script that logs its
    arguments) gets SIGUSR1: Lightning's requeue path writes ``hpc_ckpt_1.ckpt`` of the step
    reached and calls ``scontrol requeue 4242``; the job exits 75; the requeued job (the same
    command and environment) resumes from that file and matches the uninterrupted run."""
    out = tmp_path
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    env = _env(**FAKE_SLURM, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    args = _args(out, workers=1)

    def sigusr1(proc: subprocess.Popen[str]) -> None:
        os.killpg(proc.pid, signal.SIGUSR1)

    code, err, steps = _interrupt(out, args, sigusr1, env=env)
    assert code == EXIT_PREEMPTED, err[-3000:]
    reached = steps[-1]["step"]
    hpc = out / "hpc_ckpt_1.ckpt"
    assert _global_step(hpc) == reached
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    _preempted_line(err, "SIGUSR1", reached, hpc, requeued=(
        " and asked SLURM to requeue job 4242; the requeued job resumes from it"))  # fmt: skip

    code, err = _run(out, args, env)
    assert code == 0, err[-3000:]
    assert f"resuming from {hpc} (step {reached}, epoch 0)" in err
    _assert_same_run(out, reference)
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"  # not requeued again


def _all_gone(out: Path, ranks: int = 2) -> bool:
    return not any(_alive(_pid(out, r)) for r in range(ranks))


@pytest.mark.slow
def test_ddp_signal_to_one_rank_or_all_ends_every_rank_with_one_checkpoint(tmp_path: Path) -> None:
    """2-process gloo DDP (Lightning's launcher). SIGTERM to rank 1 only; then, in the rerun of
    the identical command (which resumes), SIGUSR1 to every process: each time both ranks stop
    after the same step, one ``last.ckpt`` of that step is written, and every process is gone
    when the job exits 75 with the last line naming signal, step and file."""
    out = tmp_path
    args = _args(out, devices=2)

    def sigterm_rank1(proc: subprocess.Popen[str]) -> None:
        os.kill(_pid(out, 1), signal.SIGTERM)

    def sigusr1_all(proc: subprocess.Popen[str]) -> None:
        os.killpg(proc.pid, signal.SIGUSR1)

    last = out / "ckpt" / "last.ckpt"
    reached = [0]
    for send, name in ((sigterm_rank1, "SIGTERM"), (sigusr1_all, "SIGUSR1")):
        code, err, steps = _interrupt(out, args, send)
        assert code == EXIT_PREEMPTED, err[-3000:]
        _wait_for(lambda: _all_gone(out), 10, "every rank to exit")
        assert steps[0]["step"] == reached[-1] + 1  # a rerun resumes where the last one stopped
        reached.append(steps[-1]["step"])
        for rank in range(2):  # both ranks stopped after the same step, each step ran once
            assert [r["step"] for r in _steps(out, rank)] == list(range(1, reached[-1] + 1))
        assert _global_step(last) == reached[-1]  # one checkpoint, of the step both reached
        _preempted_line(err, name, reached[-1], last)
    assert f"resuming from {last} (step {reached[1]}, epoch 0)" in err
    assert reached[2] < STEPS, reached


@pytest.mark.slow
def test_ddp_rank0_killed_ends_the_job_within_seconds_naming_rank0(tmp_path: Path) -> None:
    """Rank 0 (the launcher) is SIGKILLed at the start of step 3: the job exits non-zero, rank 1
    is gone within 10 s, and the last line of the job's stderr names rank 0."""
    out = tmp_path
    kill = ["--trainer.callbacks+=fault_callbacks.KillAtStep", "--trainer.callbacks.out", str(out),
            "--trainer.callbacks.step", "3", "--trainer.callbacks.rank", "0"]  # fmt: skip
    proc = _popen(out, _args(out, *kill, devices=2))
    marker = out / "killed_rank0"
    _wait_for(lambda: marker.exists() and marker.read_text().strip(), 240, "the kill")
    killed = float(marker.read_text())
    code = proc.wait(60)
    _wait_for(lambda: _all_gone(out), 30, "every rank to exit")
    elapsed = time.time() - killed
    assert code != 0
    assert elapsed < 10, elapsed
    print(f"rank 0 killed: every process gone {elapsed:.1f} s after the kill")
    last = _stderr(out).strip().splitlines()[-1]
    assert last.startswith("jepa-lightning: error: [rank 1] Distributed training failed because "
                           "rank 0 (pid "), last  # fmt: skip
