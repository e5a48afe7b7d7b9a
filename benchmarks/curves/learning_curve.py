"""Learning curves on CIFAR-10 at equal wall-clock: CNN-JEPA and C-JEPA/I-JEPA against their
peers (lightly's BYOL, SimCLR, VICReg; LeJEPA on the ResNet and on the ViT), each run as its
authors run it, and the random encoder.

Every method pretrains for the same budget of minutes *on the reference machine* (the one
``benchmarks/RESULTS.md`` was measured on, where ``throughput.py`` times a lightly BYOL step at
0.62 s). Phases, each resumable:

1. ``plan``: on a quiet machine, time the reference BYOL step here and each method's *whole*
   training iteration at the benchmark's settings (data loading, forward, backward, optimiser,
   EMA and every per-step callback: the interval from one step's end to the next), then fix each
   method's number of steps = budget × (BYOL step here / 0.62 s) / iteration time, so that the
   LR, weight-decay and EMA schedules run to completion (``plan.json`` per method).
2. ``train``: fixed-step training with checkpoints every ``--ckpt-every`` steps; a killed run
   resumes exactly from ``last.ckpt`` (methods with ``done.json`` are skipped). Every encoder of
   the method (``online``; ``target`` for EMA methods) is saved at ``--evals`` evenly spaced
   steps with the *measured* training time so far (the same whole-iteration clock, less the
   benchmark's own checkpoint and snapshot saving), in seconds here and in reference seconds
   (each segment between snapshots scaled by the reference BYOL steps timed at its two ends,
   outside the clock: the machine drifts during a run). Step counts,
   not the clock, end training, so a resumed or slowed run gets the same result.
3. ``eval``: the protocol's encoder of each snapshot (and the other encoder of an EMA method at
   the final snapshot; at every one with ``--other-encoders all``), average-pooled, on clean
   images: weighted k-NN
   (k = 200, τ = 0.1, cosine) against a bank of ``--bank-size`` training images, queried by
   ``--sel-size`` *other* training images (the selection split: recipes and ablations are
   chosen on it) and by ``--test-size`` test images (reported rows only); RankMe of the test
   embeddings. Rows go to the CSV (existing rows are skipped, never edited). A screening runs
   with ``--test-size 0``: the test images are never read, RankMe is the selection queries',
   and the report and plot give the selection split only.
4. ``report``: a table (planned and measured minutes, both encoders), the PNG plot and the last
   lines ``vit_knn_top1@<budget>min: ...`` and ``knn_top1@<budget>min: cnn_jepa=A byol=B
   simclr=C vicreg=D lejepa=E random=F [others]``, each method on its protocol encoder
   (``curve_methods.PROTOCOL``); ``sel_`` lines give the same on the selection split.

A method is ``name`` or ``name:key=value,...``; names: ``cnn_jepa`` (the shipped
``configs/cifar10_cnn_jepa_resnet18.yaml`` recipe), ``cnn_jepa_paper`` (the paper's CNN-JEPA),
``cjepa`` (``configs/cifar10_cjepa_vit_tiny.yaml``), ``ijepa``, ``byol``, ``simclr``, ``vicreg``,
``lejepa``, ``lejepa_vit``; keys override JEPA options (``target_norm=batch``, ``lr=0.005``,
``wd``, ``warmup`` = warm-up fraction of the steps, ``vicreg_weight``, ...).

    python -m benchmarks.curves.learning_curve --phase all --budget-min 30
    python -m benchmarks.curves.learning_curve --phase all --budget-min 4 --methods cnn_jepa \\
        cnn_jepa:target_norm=none --bank-size 5000 --test-size 5000 --tag ablation
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from benchmarks.curves.curve_methods import build_method, eval_encoders, parse_spec
from benchmarks.curves.curve_report import evaluate_snapshots, read_rows, report

CACHE = Path.home() / ".cache/jepa-lightning/learning_curve"
REF_BYOL_STEP_S = 0.62  # throughput.py's lightly BYOL step on the RESULTS.md machine
QUIET_RATIO, QUIET_TRIES = 1.2, 3  # a calibration counts when the reference steps around it agree


def reference_byol_step() -> float:
    """Median seconds of ``throughput.py``'s BYOL step (ResNet-18, 64 px, batch 64) here."""
    import statistics

    from benchmarks.common import Byol

    torch.manual_seed(0)
    model = Byol("resnet18", False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    x0, x1 = torch.randn(64, 3, 64, 64), torch.randn(64, 3, 64, 64)
    times = []
    for i in range(9):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model.loss(x0, x1).backward()
        opt.step()
        model.ema()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


class IterationClock(pl.Callback):
    """Wall time of whole training iterations: from one step's end to the next, so data loading,
    forward, backward, optimiser step, the EMA update and every other per-step callback are all
    inside, whatever the callback order. Time the benchmark spends on itself (checkpoints,
    snapshots) is reported through :meth:`exclude` and left out."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t: float | None = None
        self._excluded = 0.0

    def exclude(self, seconds: float) -> None:
        self._excluded += seconds

    def on_train_start(self, *args) -> None:  # type: ignore[no-untyped-def]
        self._t, self._excluded = time.perf_counter(), 0.0

    def on_train_batch_end(self, *args) -> None:  # type: ignore[no-untyped-def]
        now = time.perf_counter()
        assert self._t is not None
        self.times.append(now - self._t - self._excluded)
        self._t, self._excluded = now, 0.0


def planned_steps(budget_min: float, ref_step_here_s: float, step_s: float, evals: int) -> int:
    """Steps that fill ``budget_min`` reference-machine minutes: the budget in this machine's
    seconds (scaled by its reference BYOL step against ``REF_BYOL_STEP_S``) over the method's
    measured iteration time; at least one step per evaluation."""
    budget_here = budget_min * 60 * ref_step_here_s / REF_BYOL_STEP_S
    return max(evals, int(budget_here / step_s))


def calibrated_step_s(times: list[float]) -> float:
    """A method's iteration time from a calibration run: the mean after the first three
    iterations (start-up), so that occasional slow steps (data waits) count as they will."""
    warm = times[3:] or times[-1:]
    return sum(warm) / len(warm)


def run_dir(args: argparse.Namespace, spec: str) -> Path:
    safe = spec.replace(":", "__").replace(",", "_").replace("=", "-").replace("/", "_")
    return Path(args.run_root) / args.tag / safe


def info_batch(spec: str, args: argparse.Namespace) -> int:
    return int(parse_spec(spec)[1].get("batch", args.batch_size))


def _kept_plan(args: argparse.Namespace, spec: str) -> Path | None:
    """``spec``'s committed plan under ``--plans`` (a comparison planned in an earlier session)."""
    return Path(args.plans) / f"{run_dir(args, spec).name}.json" if args.plans else None


def plan(args: argparse.Namespace) -> None:
    for spec in args.methods:  # plans fixed in an earlier session are reused, never re-timed
        kept, mine = _kept_plan(args, spec), run_dir(args, spec) / "plan.json"
        if kept is not None and kept.exists() and not mine.exists():
            mine.parent.mkdir(parents=True, exist_ok=True)
            mine.write_text(kept.read_text())
    todo = [s for s in args.methods if not (run_dir(args, s) / "plan.json").exists()]
    if not todo:
        return
    # The machine's speed drifts by tens of percent over minutes (seen here: the same step 2.7 s
    # and 3.7 s four minutes apart), so every method is bracketed by reference BYOL steps timed
    # just before and just after it, and its scale is their mean.
    ref_before = args.reference_byol_s or reference_byol_step()
    for spec in todo:
        for attempt in range(1, QUIET_TRIES + 1):
            pl.seed_everything(args.seed, verbose=False)
            model, dm, _ = build_method(spec, args)
            clock = IterationClock()
            trainer = _trainer(max_steps=args.calib_steps, callbacks=[clock])
            trainer.fit(model, dm)
            step_s = calibrated_step_s(clock.times)
            ref_after = args.reference_byol_s or reference_byol_step()
            bracket, ref_before = [ref_before, ref_after], ref_after
            if max(bracket) <= QUIET_RATIO * min(bracket):
                break
            # Another process took the cores during this method's timing: time it again.
            print(f"reference BYOL step {bracket[0]:.3f} s before and {bracket[1]:.3f} s after "
                  f"{spec} (try {attempt}/{QUIET_TRIES}): the machine is not quiet")  # fmt: skip
        else:
            raise SystemExit(f"could not time {spec} on a quiet machine; stop other work and rerun")
        ref = sum(bracket) / 2
        scale = ref / REF_BYOL_STEP_S
        print(f"reference BYOL step here: {bracket[0]:.3f} s before, {bracket[1]:.3f} s after "
              f"(x{scale:.2f} the reference machine)")  # fmt: skip
        budget_here = args.budget_min * 60 * scale
        steps = planned_steps(args.budget_min, ref, step_s, args.evals)
        if args.fixed_steps:  # ablations of equal step cost: equal images seen
            steps = args.fixed_steps * args.batch_size // info_batch(spec, args)
        evals = sorted({round(k * steps / args.evals) for k in range(args.evals + 1)})
        info = {
            "spec": spec,
            "step_s": step_s,
            "step_s_includes": "whole iteration: data loading, step, EMA, callbacks",
            "calib_times_s": [round(t, 3) for t in clock.times],
            "ref_byol_step_s": ref,
            "ref_byol_step_s_before_after": bracket,
            "scale": scale,
            "budget_min_ref": args.budget_min,
            "budget_s_here": budget_here,
            "steps": steps,
            "eval_steps": evals,
            "batch_size": info_batch(spec, args),
            "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        d = run_dir(args, spec)
        d.mkdir(parents=True, exist_ok=True)
        (d / "plan.json").write_text(json.dumps(info, indent=1))
        kept = _kept_plan(args, spec)
        if kept is not None:
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps(info, indent=1))
        print(f"plan {spec}: {step_s:.3f} s/step -> {steps} steps, evals at {evals}", flush=True)


def _trainer(**kwargs) -> pl.Trainer:  # type: ignore[no-untyped-def]
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **{"enable_checkpointing": False, **kwargs},
    )


def train(args: argparse.Namespace) -> None:
    for spec in args.methods:
        d = run_dir(args, spec)
        info = json.loads((d / "plan.json").read_text())
        if (d / "done.json").exists() or recorded(args.csv, spec, info["steps"]):
            continue
        pl.seed_everything(args.seed, verbose=False)
        model, dm, _ = build_method(spec, args, info["steps"])
        ref_here = args.reference_byol_s or reference_byol_step()
        retime = None if args.reference_byol_s else reference_byol_step
        snaps = Snapshots(d, info["eval_steps"], ref_here, retime)
        ckpt = TimedCheckpoint(
            snaps, dirpath=d, every_n_train_steps=args.ckpt_every, save_last=True, save_top_k=0
        )
        trainer = _trainer(
            max_steps=info["steps"], callbacks=[snaps, ckpt], enable_checkpointing=True
        )
        last = d / "last.ckpt"
        t0 = time.perf_counter()
        trainer.fit(model, dm, ckpt_path=str(last) if last.exists() else None)
        snaps.write_wall()
        done = {
            "steps": trainer.global_step,
            **snaps.wall(),
            "session_s": time.perf_counter() - t0,
        }
        (d / "done.json").write_text(json.dumps(done))
        print(f"trained {spec}: {done}", flush=True)


def recorded(csv_path: Path, spec: str, steps: int) -> bool:
    """Whether ``spec``'s final evaluation is already in the CSV (its training is not redone)."""
    return any(r["method"] == spec and int(r["step"]) == steps for r in read_rows(csv_path))


class Snapshots(IterationClock):
    """Saves every encoder of the method at the planned steps, with the measured training time
    so far: this machine's seconds, and reference-machine seconds.

    The machine's speed drifts during a 45-minute run (seen: a step 3.95 s when planned, 4.9 s
    half an hour later with nothing else running), so one reference BYOL step timed at the start
    would misreport the budget. With ``retime``, the reference step is timed again at every
    snapshot (outside the clock) and each segment between snapshots is converted at the mean of
    the reference steps at its two ends, as ``plan`` brackets a calibration."""

    def __init__(
        self, d: Path, steps: list[int], ref_s: float, retime: Callable[[], float] | None = None
    ) -> None:
        super().__init__()
        self.d, self.steps, self.ref_s, self.retime = d, set(steps), ref_s, retime
        f = d / "wall.json"
        prev = json.loads(f.read_text()) if f.exists() else {}
        self.prev_s = prev.get("train_s", 0.0)
        self.prev_ref_s = prev.get("train_s_ref", self.prev_s * REF_BYOL_STEP_S / ref_s)
        self.refs: list[float] = [*prev.get("ref_byol_steps_s", []), ref_s]

    def wall(self) -> dict[str, Any]:
        here = sum(self.times)  # the open segment, at the reference step timed at its start
        return {
            "train_s": self.prev_s + here,
            "train_s_ref": self.prev_ref_s + here * REF_BYOL_STEP_S / self.ref_s,
            "ref_byol_steps_s": self.refs,
        }

    def write_wall(self) -> None:
        (self.d / "wall.json").write_text(json.dumps(self.wall()))

    def close_segment(self) -> None:
        """Time the reference step now and convert the segment since the last one at the mean
        of both (no-op without ``retime``)."""
        if self.retime is None:
            return
        ref_now = self.retime()
        here = sum(self.times)
        self.prev_s += here
        self.prev_ref_s += here * REF_BYOL_STEP_S / ((self.ref_s + ref_now) / 2)
        self.times.clear()
        self.ref_s = ref_now
        self.refs.append(ref_now)

    def _save(self, module: pl.LightningModule, step: int) -> None:
        path = self.d / f"snap_{step:06d}.pt"
        if step in self.steps and not path.exists():
            t0 = time.perf_counter()
            if step > 0:
                self.close_segment()
            states = {k: enc.state_dict() for k, enc in eval_encoders(module).items()}
            torch.save({"states": states, **self.wall()}, path)
            self.exclude(time.perf_counter() - t0)

    def on_train_start(self, trainer, module) -> None:  # type: ignore[no-untyped-def]
        super().on_train_start()
        self._save(module, trainer.global_step)

    def on_train_batch_end(self, trainer, module, *args) -> None:  # type: ignore[no-untyped-def]
        super().on_train_batch_end()
        self._save(module, trainer.global_step)

    def on_save_checkpoint(self, trainer, module, checkpoint) -> None:  # type: ignore[no-untyped-def]
        self.write_wall()


class TimedCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose saving time the run's clock leaves out (benchmark overhead)."""

    def __init__(self, clock: IterationClock, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.clock = clock

    def on_train_batch_end(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        super().on_train_batch_end(*args, **kwargs)
        self.clock.exclude(time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--phase", choices=["plan", "train", "eval", "report", "all"], default="all")
    ap.add_argument("--methods", nargs="+",
                    default=["cnn_jepa", "cnn_jepa_paper", "byol", "simclr", "vicreg", "lejepa",
                             "cjepa", "ijepa", "lejepa_vit"])  # fmt: skip
    ap.add_argument("--budget-min", type=float, default=30.0, help="reference-machine minutes")
    ap.add_argument("--evals", type=int, default=6, help="evaluations after step 0")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--bank-size", type=int, default=10000)
    ap.add_argument("--sel-size", type=int, default=5000,
                    help="selection queries: training images outside the bank")  # fmt: skip
    ap.add_argument("--test-size", type=int, default=10000,
                    help="test queries; 0 = a screening: the test images are never read, "
                         "only the selection split is scored and reported")  # fmt: skip
    ap.add_argument("--other-encoders", choices=["final", "all"], default="final",
                    help="the encoder an EMA method is not reported with (a JEPA's online one, "
                    "BYOL's EMA target): scored at the final snapshot only (default: a third "
                    "less evaluation) or at every snapshot")  # fmt: skip
    ap.add_argument("--snapshots", choices=["all", "ends"], default="all",
                    help="evaluate every snapshot, or only step 0 and the last (the final "
                    "numbers first; a later call with 'all' fills the curve in)")  # fmt: skip
    ap.add_argument("--calib-steps", type=int, default=15)
    ap.add_argument("--reference-byol-s", type=float, default=0.0,
                    help="throughput.py's BYOL step here, if known (0: measure)")  # fmt: skip
    ap.add_argument("--fixed-steps", type=int, default=0,
                    help="ablations: this many steps at --batch-size (scaled to equal images for "
                    "a method's own batch) instead of the budget")  # fmt: skip
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="CIFAR-10 ImageFolder root (train/, test/)")
    ap.add_argument("--tag", default="main", help="run folder under --run-root")
    ap.add_argument("--run-root", default=str(CACHE))
    ap.add_argument("--csv", default=None, help="default: <run-root>/<tag>/curve.csv")
    ap.add_argument("--plans", default=None,
                    help="folder of committed plans (<method>.json), reused instead of timing "
                    "again: one comparison's step counts, trained across sessions")  # fmt: skip
    ap.add_argument("--png", default=None, help="plot path (default: next to the CSV)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.csv = Path(args.csv or Path(args.run_root) / args.tag / "curve.csv")
    args.png = Path(args.png or args.csv.with_suffix(".png"))
    phases = ["plan", "train", "eval", "report"] if args.phase == "all" else [args.phase]
    for phase in phases:
        if phase == "plan":
            plan(args)
        elif phase == "train":
            train(args)
        elif phase == "eval":
            evaluate_snapshots(args, [(s, run_dir(args, s)) for s in args.methods])
        else:
            report(args, [(s, run_dir(args, s)) for s in args.methods])


if __name__ == "__main__":
    main()
