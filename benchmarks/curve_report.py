"""Evaluation and report of ``learning_curve.py``: k-NN and RankMe of every saved snapshot, the
CSV, the table, the plot and the ``knn_top1@...`` line."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import torch
from curve_methods import fresh_encoder
from quality import cifar_datamodule_args
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from jepa_lightning import ImageFolderDataModule
from jepa_lightning.callbacks.metrics import knn_accuracy, rankme

FIELDS = ["method", "step", "steps", "batch", "minutes_ref", "train_min_here", "knn_top1",
          "rankme", "step_s", "scale"]  # fmt: skip
CORE = ("cnn_jepa", "byol", "simclr", "vicreg")
VIT = ("cjepa", "ijepa")  # ViT-Tiny methods: their own random init and their own last line


def is_vit(spec: str) -> bool:
    return spec.partition(":")[0] in VIT


def random_init(rows: list[dict[str, str]], vit: bool) -> tuple[float, int]:
    """Mean k-NN of the step-0 snapshots (random inits) of the ResNet or of the ViT methods."""
    inits = [float(r["knn_top1"]) for r in rows
             if int(r["step"]) == 0 and is_vit(r["method"]) == vit]  # fmt: skip
    return (sum(inits) / len(inits) if inits else math.nan), len(inits)


def _eval_sets(args: argparse.Namespace) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Clean (resize-free, normalised) bank and test images in memory, fixed by the seed."""
    dm = ImageFolderDataModule(**cifar_datamodule_args(args.data, 256, args.workers))
    dm.setup()
    g = torch.Generator().manual_seed(args.seed)
    bank_idx = torch.randperm(len(dm.train_eval), generator=g)[: args.bank_size].tolist()
    test_idx = torch.randperm(len(dm.val), generator=g)[: args.test_size].tolist()

    def load(ds, idx):  # type: ignore[no-untyped-def]
        xs, ys = zip(*DataLoader(Subset(ds, idx), batch_size=512, num_workers=args.workers),
                     strict=True)  # fmt: skip
        return torch.cat(xs), torch.cat(ys)

    return (*load(dm.train_eval, bank_idx), *load(dm.val, test_idx))


@torch.inference_mode()
def _features(encoder: nn.Module, images: Tensor) -> Tensor:
    encoder.eval()
    return torch.cat([encoder(x).mean(dim=(2, 3)) for x in images.split(500)])  # (N, C)


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def evaluate_snapshots(args: argparse.Namespace, runs: list[tuple[str, Path]]) -> None:
    done = {(r["method"], int(r["step"])) for r in read_rows(args.csv)}
    todo = [
        (spec, d, snap)
        for spec, d in runs
        for snap in sorted(d.glob("snap_*.pt"))
        if (spec, int(snap.stem.split("_")[1])) not in done
    ]
    if not todo:
        return
    bank, bank_y, test, test_y = _eval_sets(args)
    new = not args.csv.exists()
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
            writer.writeheader()
        for spec, d, snap in todo:
            plan = json.loads((d / "plan.json").read_text())
            saved = torch.load(snap, weights_only=True)
            encoder = fresh_encoder(spec)
            encoder.load_state_dict(saved["state"])
            fb, fq = _features(encoder, bank), _features(encoder, test)
            knn = knn_accuracy(fq, test_y, fb, bank_y, num_classes=10, topk=(1,))[1]
            step = int(snap.stem.split("_")[1])
            row = {
                "method": spec,
                "step": step,
                "steps": plan["steps"],
                "batch": plan["batch_size"],
                "minutes_ref": round(step * plan["step_s"] / plan["scale"] / 60, 3),
                "train_min_here": round(saved["train_s"] / 60, 3),
                "knn_top1": round(100 * knn, 2),
                "rankme": round(rankme(fq), 1),
                "step_s": round(plan["step_s"], 4),
                "scale": round(plan["scale"], 3),
            }
            writer.writerow(row)
            f.flush()
            print(f"eval {spec} step {step}: k-NN {row['knn_top1']} RankMe {row['rankme']}",
                  flush=True)  # fmt: skip


def _final(rows: list[dict[str, str]], spec: str) -> dict[str, str] | None:
    mine = [r for r in rows if r["method"] == spec]
    return max(mine, key=lambda r: int(r["step"])) if mine else None


def report(args: argparse.Namespace, runs: list[tuple[str, Path]]) -> None:
    rows = read_rows(args.csv)
    if not rows:
        print("no evaluations yet")
        return
    # The random encoder: every method's step-0 snapshot is a random init; report their mean.
    random, n_inits = random_init(rows, vit=False)
    print(f"\n# CIFAR-10 (JPEG q75) 32 px, ResNet-18 small stem, "
          f"budget {args.budget_min:g} reference-minutes each; k-NN k=200 tau=0.1, bank "
          f"{args.bank_size} train / {args.test_size} test; random init = mean of step-0 "
          f"snapshots ({n_inits} ResNet-18)")  # fmt: skip
    print("| method | batch | s/step here | steps | epochs | first k-NN | best k-NN | final k-NN | "
          "final RankMe | train min here |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for spec, _ in runs:
        mine = sorted((r for r in rows if r["method"] == spec), key=lambda r: int(r["step"]))
        if not mine:
            continue
        last, first = mine[-1], next((r for r in mine if int(r["step"]) > 0), mine[-1])
        best = max(float(r["knn_top1"]) for r in mine)
        epochs = int(last["steps"]) * int(last["batch"]) / 50_000
        cells = [spec, last["batch"], f"{float(last['step_s']):.3f}",
                 f"{last['step']}/{last['steps']}", f"{epochs:.2f}", first["knn_top1"],
                 f"{best:.2f}", last["knn_top1"], last["rankme"],
                 f"{float(last['train_min_here']):.1f}"]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    _plot(args, rows, runs, random)
    finals = {spec: _final(rows, spec) for spec, _ in runs}

    def final(name: str) -> str:
        r = finals.get(name)
        complete = r is not None and int(r["step"]) == int(r["steps"])
        return f"{name}={float(r['knn_top1']):.2f}" if complete else f"{name}=nan"

    if any(is_vit(s) for s, _ in runs):  # C-JEPA against I-JEPA, same ViT
        vit_random, _ = random_init(rows, vit=True)
        vit = [*VIT, *(s for s, _ in runs if is_vit(s) and s not in VIT)]
        print(f"vit_knn_top1@{args.budget_min:g}min: "
              + " ".join([*(final(n) for n in vit), f"random={vit_random:.2f}"]))  # fmt: skip
    others = [s for s, _ in runs if s not in CORE and not is_vit(s)]
    parts = [*(final(n) for n in CORE), f"random={random:.2f}", *(final(n) for n in others)]
    print(f"knn_top1@{args.budget_min:g}min: " + " ".join(parts))


def _plot(
    args: argparse.Namespace,
    rows: list[dict[str, str]],
    runs: list[tuple[str, Path]],
    random: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = len(runs) > 6  # the legend then goes beside the axes, not over the curves
    fig, ax = plt.subplots(figsize=(8.6 if many else 6.4, 4.0), dpi=100)
    for spec, _ in runs:
        mine = sorted((r for r in rows if r["method"] == spec), key=lambda r: int(r["step"]))
        if mine:
            xs = [float(r["minutes_ref"]) for r in mine]
            style = {"marker": "s", "ls": "-."} if is_vit(spec) else {"marker": "o"}
            ax.plot(xs, [float(r["knn_top1"]) for r in mine], ms=3, label=spec, **style)
    if not math.isnan(random):
        ax.axhline(random, color="grey", ls="--", lw=1, label=f"random ResNet-18 ({random:.1f})")
    vit_random, _ = random_init(rows, vit=True)
    vit = any(is_vit(s) for s, _ in runs)
    if vit and not math.isnan(vit_random):
        ax.axhline(vit_random, color="grey", ls=":", lw=1, label=f"random ViT ({vit_random:.1f})")
    ax.set_xlabel("pretraining minutes (reference machine, 2 CPU cores)")
    ax.set_ylabel("k-NN top-1 (%)")
    nets = "ResNet-18 small stem, ViT-Tiny/4" if vit else "ResNet-18 small stem"
    ax.set_title(f"CIFAR-10, {nets}: k-NN of the evaluated encoder", fontsize=10)
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.png)
    print(f"plot: {args.png}")
