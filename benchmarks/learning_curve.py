"""Learning curves on CIFAR-10 at equal wall-clock: CNN-JEPA against lightly's BYOL, SimCLR and
VICReg, and the random encoder.

Every method pretrains a ResNet-18 with the small-image stem (32 px) for the same budget of
minutes *on the reference machine* (the one ``benchmarks/RESULTS.md`` was measured on, where
``throughput.py`` times a lightly BYOL step at 0.62 s). Phases, each resumable:

1. ``plan``: time the reference BYOL step here (``throughput.py``'s step) and each method's
   training step at the benchmark's settings, on a quiet machine, then fix each method's number
   of steps = budget × (BYOL step here / 0.62 s) / step time, so that the LR, weight-decay and
   EMA schedules run to completion (``plan.json`` per method). All methods are planned in one go.
2. ``train``: fixed-step training with checkpoints every ``--ckpt-every`` steps; a killed run
   resumes exactly from ``last.ckpt`` (methods with ``done.json`` are skipped). The encoder the
   method means (EMA target encoder for CNN-JEPA and BYOL, the online trunk for SimCLR/VICReg)
   is saved at ``--evals`` evenly spaced steps. Step counts, not the clock, end training, so a
   resumed or slowed run gets the same result.
3. ``eval``: each snapshot, average-pooled, on clean images: weighted k-NN (k = 200, τ = 0.1,
   cosine) with a ``--bank-size`` bank of train images against ``--test-size`` test images, and
   RankMe of the test embeddings. Rows go to ``curve.csv`` (existing rows are skipped).
4. ``report``: a table, the PNG plot and the last line
   ``knn_top1@<budget>min: cnn_jepa=A byol=B simclr=C vicreg=D random=E [others]``.

A method is ``name`` or ``name:key=value,...``; names: ``cnn_jepa`` (the shipped
``configs/cifar10_cnn_jepa_resnet18.yaml`` recipe), ``cnn_jepa_paper`` (the paper's CNN-JEPA),
``byol``, ``simclr``, ``vicreg``; keys override CNN-JEPA options (``target_norm=batch``,
``lr=0.005``, ``wd``, ``warmup`` = warm-up fraction of the steps, ``vicreg_weight``, ...).

    python benchmarks/learning_curve.py --phase all --budget-min 30
    python benchmarks/learning_curve.py --phase all --budget-min 4 --methods cnn_jepa \\
        cnn_jepa:target_norm=none --bank-size 5000 --test-size 5000 --tag ablation
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from curve_methods import build_method, encoder_for_eval, parse_spec
from curve_report import evaluate_snapshots, read_rows, report
from lightning.pytorch.callbacks import ModelCheckpoint

CACHE = Path.home() / ".cache/jepa-lightning/learning_curve"
REF_BYOL_STEP_S = 0.62  # throughput.py's lightly BYOL step on the RESULTS.md machine


def reference_byol_step() -> float:
    """Median seconds of ``throughput.py``'s BYOL step (ResNet-18, 64 px, batch 64) here."""
    import statistics

    from throughput import Byol

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


class StepTimer(pl.Callback):
    """Times training steps (batch start to batch end)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:  # type: ignore[no-untyped-def]
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:  # type: ignore[no-untyped-def]
        self.times.append(time.perf_counter() - self._t)


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
        pl.seed_everything(args.seed, verbose=False)
        model, dm, _ = build_method(spec, args)
        timer = StepTimer()
        trainer = _trainer(max_steps=args.calib_steps, callbacks=[timer])
        trainer.fit(model, dm)
        warm = timer.times[3:] or timer.times[-1:]  # (the first steps warm up; --calib-steps < 4)
        step_s = sorted(warm)[len(warm) // 2]
        ref_after = args.reference_byol_s or reference_byol_step()
        bracket, ref_before = [ref_before, ref_after], ref_after
        ref = sum(bracket) / 2
        scale = ref / REF_BYOL_STEP_S
        print(f"reference BYOL step here: {bracket[0]:.3f} s before, {bracket[1]:.3f} s after "
              f"(x{scale:.2f} the reference machine)")  # fmt: skip
        budget_here = args.budget_min * 60 * scale
        steps = max(args.evals, int(budget_here / step_s))
        if args.fixed_steps:  # ablations of equal step cost: equal images seen
            steps = args.fixed_steps * args.batch_size // info_batch(spec, args)
        evals = sorted({round(k * steps / args.evals) for k in range(args.evals + 1)})
        info = {
            "spec": spec,
            "step_s": step_s,
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
        snaps = Snapshots(d, info["eval_steps"], spec)
        ckpt = ModelCheckpoint(
            dirpath=d, every_n_train_steps=args.ckpt_every, save_last=True, save_top_k=0
        )
        trainer = _trainer(
            max_steps=info["steps"], callbacks=[snaps, ckpt], enable_checkpointing=True
        )
        last = d / "last.ckpt"
        t0 = time.perf_counter()
        trainer.fit(model, dm, ckpt_path=str(last) if last.exists() else None)
        wall = snaps.prev + snaps.train_s
        (d / "wall.json").write_text(json.dumps({"train_s": wall}))
        done = {
            "steps": trainer.global_step,
            "train_s": wall,
            "session_s": time.perf_counter() - t0,
        }
        (d / "done.json").write_text(json.dumps(done))
        print(f"trained {spec}: {done}", flush=True)


def recorded(csv_path: Path, spec: str, steps: int) -> bool:
    """Whether ``spec``'s final evaluation is already in the CSV (its training is not redone)."""
    return any(r["method"] == spec and int(r["step"]) == steps for r in read_rows(csv_path))


def _previous_wall(d: Path) -> float:
    f = d / "wall.json"
    return json.loads(f.read_text())["train_s"] if f.exists() else 0.0


class Snapshots(pl.Callback):
    """Saves the evaluated encoder at the planned steps, with the training seconds so far."""

    def __init__(self, d: Path, steps: list[int], spec: str) -> None:
        self.d, self.steps, self.spec = d, set(steps), spec
        self.train_s = 0.0
        self.prev = _previous_wall(d)

    def _save(self, module: pl.LightningModule, step: int) -> None:
        path = self.d / f"snap_{step:06d}.pt"
        if step in self.steps and not path.exists():
            state = encoder_for_eval(self.spec, module).state_dict()
            torch.save({"state": state, "train_s": self.prev + self.train_s}, path)

    def on_train_start(self, trainer, module) -> None:  # type: ignore[no-untyped-def]
        self._save(module, trainer.global_step)

    def on_train_batch_start(self, *args) -> None:  # type: ignore[no-untyped-def]
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, module, *args) -> None:  # type: ignore[no-untyped-def]
        self.train_s += time.perf_counter() - self._t
        self._save(module, trainer.global_step)

    def on_save_checkpoint(self, trainer, module, checkpoint) -> None:  # type: ignore[no-untyped-def]
        (self.d / "wall.json").write_text(json.dumps({"train_s": self.prev + self.train_s}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--phase", choices=["plan", "train", "eval", "report", "all"], default="all")
    ap.add_argument("--methods", nargs="+",
                    default=["cnn_jepa", "cnn_jepa_paper", "byol", "simclr", "vicreg"])  # fmt: skip
    ap.add_argument("--budget-min", type=float, default=30.0, help="reference-machine minutes")
    ap.add_argument("--evals", type=int, default=6, help="evaluations after step 0")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--bank-size", type=int, default=10000)
    ap.add_argument("--test-size", type=int, default=10000)
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
