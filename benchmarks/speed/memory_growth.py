"""Does memory stay flat over a long run? Resident memory of the quickstart recipe, step by step.

Runs ``jepa-lightning fit --config configs/quickstart.yaml`` in this process (the CLI's own
``fit``; CNN-JEPA ResNet-18 on the digits with every monitor of the config on: online linear
probe, k-NN every 2 epochs, collapse monitor, mask images, learning-rate monitor, TensorBoard,
``last.ckpt`` every 11 steps, the closing summary) for ``--epochs`` epochs of 22 steps (23 epochs:
506 steps) in a temporary folder, and samples after every training step the resident set size of
the training process (``VmRSS``) and, on a GPU, ``torch.cuda.memory_allocated`` /
``memory_reserved``; at every epoch end also the number of live torch tensors. Prints a table
every 100 steps and the growth per 100 steps after ``--warmup`` steps: the least-squares slope,
and the difference of the means of the first and the last 100 steps after the warm-up.

    nice -n 19 python -m benchmarks.speed.memory_growth --threads 1        # 506 steps on the CPU
    python -m benchmarks.speed.memory_growth -- --trainer.accelerator gpu  # CUDA columns filled in

The quickstart's DataModule loads in the main process (``num_workers: 0``): the training
process's RSS is the whole footprint. ``tests/end_to_end/test_memory_flat.py`` runs the same
sampler over a few dozen steps with a loose bound. The CLI imports the sampler by its class path,
``benchmarks.speed.memory_growth.MemorySampler``: the repository root must be importable (it is
under ``python -m`` from the root).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
MB = 2**20


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def live_tensors() -> int:
    """Torch tensors reachable by Python's garbage collector, after a collection."""
    gc.collect()
    # type(), not isinstance(): the latter reads __class__, which some module proxies warn on.
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


class MemorySampler(Callback):
    """Records ``{step, rss_mb, cuda_alloc_mb, cuda_reserved_mb}`` after every training step in
    ``steps`` and ``{epoch, step, rss_mb, tensors}`` after every training epoch (its monitors
    included) in ``epochs``."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.epochs: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        cuda = torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda"
        self.steps.append({
            "step": trainer.global_step,
            "rss_mb": rss_mb(),
            "cuda_alloc_mb": torch.cuda.memory_allocated() / MB if cuda else float("nan"),
            "cuda_reserved_mb": torch.cuda.memory_reserved() / MB if cuda else float("nan"),
        })  # fmt: skip

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the epoch's validation and its monitors (Lightning validates first).
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        self.epochs.append({**row, "rss_mb": rss_mb(), "tensors": live_tensors()})


def growth_per_100(steps: list[dict[str, float]], warmup: int, key: str = "rss_mb") -> dict:
    """Growth of ``key`` per 100 steps after ``warmup`` steps: the least-squares slope over
    every later sample, and (mean of the last 100 − mean of the first 100) / steps between."""
    after = [s for s in steps if s["step"] > warmup]
    if len(after) < 200:
        raise ValueError(f"need >= 200 samples after the warm-up, have {len(after)}")
    x = torch.tensor([s["step"] for s in after], dtype=torch.float64)
    y = torch.tensor([s[key] for s in after], dtype=torch.float64)
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).square().sum())
    first, last = after[:100], after[-100:]
    span = (sum(s["step"] for s in last) - sum(s["step"] for s in first)) / 100
    diff = (sum(s[key] for s in last) - sum(s[key] for s in first)) / 100
    return {"slope": 100 * slope, "ends": 100 * diff / span, "from": after[0]["step"],
            "to": after[-1]["step"]}  # fmt: skip


def run_quickstart(extra: list[str], epochs: int, config: Path = QUICKSTART) -> MemorySampler:
    """``jepa-lightning fit --config <config>`` (the CLI's own ``fit``) for ``epochs`` epochs in
    a temporary folder, with a :class:`MemorySampler` added to the config's callbacks; ``extra``
    are further CLI arguments. Returns the sampler."""
    from jepa_lightning.cli import main

    with tempfile.TemporaryDirectory(prefix="memory_growth_") as work:
        args = ["fit", "--config", str(config), "--resume", "never"]
        args += ["--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", work]
        args += ["--trainer.logger.init_args.save_dir", str(Path(work) / "runs")]
        args += ["--trainer.enable_progress_bar", "false"]
        args += ["--trainer.callbacks+=benchmarks.speed.memory_growth.MemorySampler", *extra]
        cli = main(args)
    return next(c for c in cli.trainer.callbacks if type(c).__name__ == "MemorySampler")


def _cell(value: float) -> str:
    return "—" if value != value else f"{value:.1f}"  # NaN: no GPU


def report(sampler: MemorySampler, warmup: int) -> str:
    """A markdown table every 100 steps (and the last) and the growth per 100 steps."""
    steps = sampler.steps
    tensors = {int(e["step"]): int(e["tensors"]) for e in sampler.epochs}
    marks = {1, *range(100, int(steps[-1]["step"]) + 1, 100), int(steps[-1]["step"])}
    head = (
        "| step | RSS (MB) | live tensors (epoch end) | CUDA allocated (MB) | CUDA reserved (MB) |"
    )
    lines = [head, "|---|---|---|---|---|"]
    for s in steps:
        if s["step"] in marks:
            near = min(tensors, key=lambda k: abs(k - s["step"])) if tensors else None
            count = f"{tensors[near]} (step {near})" if near is not None else "—"
            cuda = f"{_cell(s['cuda_alloc_mb'])} | {_cell(s['cuda_reserved_mb'])}"
            lines.append(f"| {int(s['step'])} | {s['rss_mb']:.1f} | {count} | {cuda} |")
    lines.append("")
    for key, name in (("rss_mb", "RSS"), ("cuda_alloc_mb", "CUDA allocated")):
        if steps[-1][key] != steps[-1][key]:
            continue
        g = growth_per_100(steps, warmup, key)
        lines.append(f"{name} growth after step {warmup} (steps {g['from']}-{g['to']}): "
                     f"{g['slope']:+.2f} MB per 100 steps (least-squares slope), "
                     f"{g['ends']:+.2f} MB per 100 steps (first vs last 100 steps)")  # fmt: skip
    counts = [int(e["tensors"]) for e in sampler.epochs]
    lines.append(f"live tensors at epoch ends: {counts}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--epochs", type=int, default=23, help="22 steps each (default: 506 steps)")
    ap.add_argument("--warmup", type=int, default=100, help="steps left out of the growth")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("extra", nargs="*", help="further CLI arguments (after --)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sampler = run_quickstart(args.extra, args.epochs)
    print(report(sampler, args.warmup))


if __name__ == "__main__":
    main()
