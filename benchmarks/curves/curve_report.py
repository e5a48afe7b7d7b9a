"""Evaluation and report of ``learning_curve.py``: k-NN (selection and test queries) and RankMe of
every encoder of every saved snapshot, the CSV, the table, the plot and the ``knn_top1@`` lines."""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import math
import statistics
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from benchmarks.common import cifar_datamodule_args
from benchmarks.curves.curve_methods import fresh_encoder, is_vit, protocol_encoder
from jepa_lightning import ImageFolderDataModule
from jepa_lightning.callbacks.metrics import knn_accuracy, rankme

FIELDS = ["method", "step", "steps", "batch", "encoder", "knn_top1", "sel_knn_top1",
          "knn_test_online", "knn_test_target", "knn_sel_online", "knn_sel_target", "rankme",
          "minutes_planned", "minutes_measured", "train_min_here", "step_s", "scale"]  # fmt: skip
CORE = ("cnn_jepa", "byol", "simclr", "vicreg", "lejepa")
VIT = ("cjepa", "ijepa", "lejepa_vit")  # ViT-Tiny methods: their own random line
LABEL = {"lejepa_vit": "lejepa"}  # the ViT line names LeJEPA as the ResNet line does
DRIFT = 0.10  # planned and measured minutes further apart than this are flagged


def random_init(
    rows: list[dict[str, str]], specs: list[str], vit: bool, column: str = "knn_top1"
) -> tuple[float, str]:
    """The random encoder of one architecture: the mean k-NN (``column``) over the *distinct*
    random initialisations among the step-0 snapshots of ``specs`` (methods built on the same
    trunk from the same seed share one; identical scores on both query sets and RankMe mark a
    shared initialisation), each counted once, and how it was formed."""
    step0 = [r for r in rows if int(r["step"]) == 0
             and r["method"] in specs and is_vit(r["method"]) == vit]  # fmt: skip
    inits = {(r["knn_top1"], r["sel_knn_top1"], r["rankme"]): float(r[column]) for r in step0}
    if not inits:
        return math.nan, "no step-0 rows"
    values = list(inits.values())
    return statistics.fmean(values), (
        f"mean of {len(values)} distinct random initialisations among {len(step0)} step-0 "
        f"snapshots ({min(values):.2f}-{max(values):.2f})"
    )


class EvalSets:
    """Clean (resize-free, normalised) images in memory, fixed by the seed: a bank of training
    images, *other* training images as selection queries, and test images as test queries."""

    def __init__(self, args: argparse.Namespace) -> None:
        dm = ImageFolderDataModule(**cifar_datamodule_args(args.data, 256, args.workers))
        dm.setup()
        g = torch.Generator().manual_seed(args.seed)
        train_idx = torch.randperm(len(dm.train_eval), generator=g).tolist()
        if args.bank_size + args.sel_size > len(train_idx):
            raise ValueError(f"--bank-size {args.bank_size} + --sel-size {args.sel_size} exceed "
                             f"the {len(train_idx)} training images")  # fmt: skip
        test_idx = torch.randperm(len(dm.val), generator=g)[: args.test_size].tolist()
        bank_idx = train_idx[: args.bank_size]
        sel_idx = train_idx[args.bank_size : args.bank_size + args.sel_size]
        self.bank, self.bank_y = self._load(dm.train_eval, bank_idx, args.workers)
        self.sel, self.sel_y = self._load(dm.train_eval, sel_idx, args.workers)
        # --test-size 0 (a screening): the test images are never read, so nothing chosen from
        # its scores can have seen them.
        self.test: Tensor | None = None
        if test_idx:
            self.test, self.test_y = self._load(dm.val, test_idx, args.workers)

    @staticmethod
    def _load(ds, idx: list[int], workers: int) -> tuple[Tensor, Tensor]:  # type: ignore[no-untyped-def]
        xs, ys = zip(*DataLoader(Subset(ds, idx), batch_size=512, num_workers=workers),
                     strict=True)  # fmt: skip
        return torch.cat(xs), torch.cat(ys)

    def score(self, encoder: nn.Module) -> dict[str, float | None]:
        """k-NN top-1 (%) of selection and test queries against the bank (test ``None`` without
        test images); RankMe of the test queries (of the selection queries without them)."""
        fb, fs = pooled_features(encoder, self.bank), pooled_features(encoder, self.sel)

        def knn(q: Tensor, qy: Tensor) -> float:
            top1 = knn_accuracy(q, qy, fb, self.bank_y, num_classes=10, topk=(1,))[1]
            return round(100 * top1, 2)

        sel = knn(fs, self.sel_y)
        if self.test is None:
            return {"sel": sel, "test": None, "rankme": rankme(fs)}
        ft = pooled_features(encoder, self.test)
        return {"sel": sel, "test": knn(ft, self.test_y), "rankme": rankme(ft)}


@torch.inference_mode()
def pooled_features(
    encoder: nn.Module, images: Tensor, bf16: bool = False, channels_last: bool = False
) -> Tensor:
    """Average-pooled float32 features (N, C) of (N, 3, H, W) images in chunks of 500. The race
    evaluates in float32: ``bf16`` (CPU bfloat16 autocast) is 2-4x faster here but flips 1.4-2.5 %
    of k-NN predictions (``benchmarks.speed.eval_precision``, RESULTS.md)."""
    encoder.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    encoder.to(memory_format=fmt)  # type: ignore[call-overload]
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with amp:
        out = [encoder(x.contiguous(memory_format=fmt)).float().mean(dim=(2, 3))
               for x in images.split(500)]  # fmt: skip
    return torch.cat(out)  # (N, C)


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


class ScoreCache:
    """Scores of the encoders already evaluated, by a digest of their architecture, their weights
    and the evaluation settings, kept as JSON beside the runs: the same encoder is evaluated once.
    That is free k-NN for the EMA target at step 0 (a copy of the online encoder) and for methods
    built on one trunk from one seed (the peers' step-0 weights are the same)."""

    VERSION = "avgpool-fp32 knn k=200 t=0.1 cosine; rankme on test"  # change if scoring changes

    def __init__(self, path: Path, args: argparse.Namespace) -> None:
        self.path = path
        self.settings = (f"{self.VERSION}|{Path(cifar_datamodule_args(args.data, 1, 0)['root'])}"
                         f"|bank {args.bank_size}|sel {args.sel_size}|test {args.test_size}"
                         f"|seed {args.seed}")  # fmt: skip
        self.scores: dict[str, dict[str, float]] = (
            json.loads(path.read_text()) if path.exists() else {}
        )

    def key(self, encoder: nn.Module, state: dict[str, Tensor]) -> str:
        h = hashlib.sha256(f"{self.settings}|{encoder!r}".encode())
        for k in sorted(state):
            t = state[k].detach().cpu().contiguous()
            h.update(f"{k}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def get(self, key: str) -> dict[str, float] | None:
        return self.scores.get(key)

    def put(self, key: str, scores: dict[str, float]) -> None:
        self.scores[key] = scores
        self.path.write_text(json.dumps(self.scores, indent=0))


def evaluate_snapshots(args: argparse.Namespace, runs: list[tuple[str, Path]]) -> None:
    done = {(r["method"], int(r["step"])) for r in read_rows(args.csv)}
    todo = [
        (spec, d, snap)
        for spec, d in runs
        for snap in sorted(d.glob("snap_*.pt"))
        if (spec, _step(snap)) not in done
        and (getattr(args, "snapshots", "all") == "all" or _at_an_end(d, snap))
    ]
    if not todo:
        return
    new = not args.csv.exists()
    if not new:
        with args.csv.open() as f:
            header = next(csv.reader(f), [])
        if header != FIELDS:
            raise SystemExit(f"{args.csv} has the columns of an older harness ({len(header)}, "
                             f"not {len(FIELDS)}); write to a new --csv")  # fmt: skip
    sets = EvalSets(args)
    cache = ScoreCache(todo[0][1].parent / "scores.json", args)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
            writer.writeheader()
        for spec, d, snap in todo:
            plan = json.loads((d / "plan.json").read_text())
            saved = torch.load(snap, weights_only=True)
            final = _step(snap) >= plan["steps"]
            protocol = protocol_encoder(spec)
            scores: dict[str, dict[str, float | None]] = {}
            # the protocol's encoder first: the other one may be a free twin of it, or skipped
            for name in sorted(saved["states"], key=lambda k: k != protocol):
                encoder = fresh_encoder(spec)
                key = cache.key(encoder, saved["states"][name])
                known = cache.get(key)
                if known is not None:
                    scores[name] = known
                    continue
                if name != protocol and not final and args.other_encoders == "final":
                    continue
                encoder.load_state_dict(saved["states"][name])
                scores[name] = sets.score(encoder)
                cache.put(key, scores[name])
            writer.writerow(_row(spec, plan, snap, saved, scores))
            f.flush()
            print(f"eval {spec} step {snap.stem}: " + ", ".join(
                f"{k} k-NN sel {v['sel']}" + (f" test {v['test']}" if v["test"] is not None else "")
                for k, v in scores.items()), flush=True)  # fmt: skip


def _step(snap: Path) -> int:
    return int(snap.stem.split("_")[1])  # snap_000817.pt -> 817


def _at_an_end(d: Path, snap: Path) -> bool:
    """Whether ``snap`` is the random initialisation or the end of its run's plan."""
    return _step(snap) == 0 or _step(snap) >= json.loads((d / "plan.json").read_text())["steps"]


def _row(spec: str, plan: dict, snap: Path, saved: dict, scores: dict) -> dict:  # type: ignore[type-arg]
    step = _step(snap)
    protocol = protocol_encoder(spec)
    na = {"test": "", "sel": ""}
    online, target = scores.get("online", na), scores.get("target", na)
    return {
        "method": spec,
        "step": step,
        "steps": plan["steps"],
        "batch": plan["batch_size"],
        "encoder": protocol,
        "knn_top1": scores[protocol]["test"],
        "sel_knn_top1": scores[protocol]["sel"],
        "knn_test_online": online["test"],
        "knn_test_target": target["test"],
        "knn_sel_online": online["sel"],
        "knn_sel_target": target["sel"],
        "rankme": round(scores[protocol]["rankme"], 1),
        "minutes_planned": round(step * plan["step_s"] / plan["scale"] / 60, 3),
        "minutes_measured": round(saved["train_s_ref"] / 60, 3),
        "train_min_here": round(saved["train_s"] / 60, 3),
        "step_s": round(plan["step_s"], 4),
        "scale": round(plan["scale"], 3),
    }


def _final(rows: list[dict[str, str]], spec: str) -> dict[str, str] | None:
    mine = [r for r in rows if r["method"] == spec]
    return max(mine, key=lambda r: int(r["step"])) if mine else None


def _drift(row: dict[str, str]) -> float:
    planned = float(row["minutes_planned"])
    return float(row["minutes_measured"]) / planned - 1 if planned > 0 else 0.0


def report(args: argparse.Namespace, runs: list[tuple[str, Path]]) -> None:
    rows = read_rows(args.csv)
    specs = [s for s, _ in runs]
    if not rows:
        print("no evaluations yet")
        return
    tested = args.test_size > 0  # a screening (--test-size 0) reports the selection split only
    test = f"{args.test_size} test images" if tested else "none (a screening never reads them)"
    print(f"\n# CIFAR-10 (JPEG q75) 32 px, budget {args.budget_min:g} reference-minutes each; "
          f"k-NN k=200 tau=0.1 against {args.bank_size} training images; selection queries "
          f"{args.sel_size} other training images, test queries {test}; "
          "each method on its protocol encoder (other encoder in brackets)")  # fmt: skip
    shown = "knn_top1" if tested else "sel_knn_top1"
    for vit in (False, True):
        value, how = random_init(rows, specs, vit, shown)
        if not math.isnan(value):
            print(f"random {'ViT' if vit else 'ResNet-18'}: {value:.2f}, {how}")
    print("| method | encoder | steps | epochs | s/step here | planned min | measured min | "
          "final k-NN sel | final k-NN test | final RankMe |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for spec in specs:
        last = _final(rows, spec)
        if last is None:
            continue
        other = "target" if last["encoder"] == "online" else "online"
        sel, test = last["sel_knn_top1"], last["knn_top1"]
        if last[f"knn_sel_{other}"]:
            sel += f" ({last[f'knn_sel_{other}']})"
        if last[f"knn_test_{other}"]:
            test += f" ({last[f'knn_test_{other}']})"
        flag = " (!)" if abs(_drift(last)) > DRIFT else ""
        epochs = int(last["steps"]) * int(last["batch"]) / 50_000
        cells = [spec, last["encoder"], f"{last['step']}/{last['steps']}", f"{epochs:.2f}",
                 f"{float(last['step_s']):.3f}", last["minutes_planned"],
                 last["minutes_measured"] + flag, sel, test, last["rankme"]]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    drifted = [s for s in specs if (r := _final(rows, s)) and abs(_drift(r)) > DRIFT]
    if drifted:
        print(f"(!) measured minutes differ by more than {DRIFT:.0%} from the planned ones: "
              + ", ".join(drifted))  # fmt: skip
    _plot(args, rows, specs, shown)
    for prefix, column in (("sel_", "sel_knn_top1"), ("", "knn_top1"))[: 2 if tested else 1]:
        for vit in (True, False):
            line = _final_line(rows, specs, vit, column)
            if line:
                name = "vit_knn_top1" if vit else "knn_top1"
                print(f"{prefix}{name}@{args.budget_min:g}min: {line}")


def _final_line(rows: list[dict[str, str]], specs: list[str], vit: bool, column: str) -> str:
    """``name=value ...`` for one architecture: the core methods, random, then any others."""
    core = VIT if vit else CORE
    mine = [s for s in specs if is_vit(s) == vit]
    if not mine:
        return ""

    def final(spec: str) -> str:
        r = _final(rows, spec)
        complete = r is not None and int(r["step"]) == int(r["steps"])
        label = LABEL.get(spec, spec)
        return f"{label}={float(r[column]):.2f}" if complete and r else f"{label}=nan"

    random, _ = random_init(rows, specs, vit, column)
    others = [s for s in mine if s not in core]
    return " ".join([*(final(n) for n in core), f"random={random:.2f}", *map(final, others)])


def _plot(
    args: argparse.Namespace, rows: list[dict[str, str]], specs: list[str], column: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = len(specs) > 6  # the legend then goes beside the axes, not over the curves
    fig, ax = plt.subplots(figsize=(8.6 if many else 6.4, 4.0), dpi=100)
    for spec in specs:
        mine = sorted((r for r in rows if r["method"] == spec), key=lambda r: int(r["step"]))
        if mine:
            xs = [float(r["minutes_planned"]) for r in mine]
            style = {"marker": "s", "ls": "-."} if is_vit(spec) else {"marker": "o"}
            label = f"{spec} ({protocol_encoder(spec)})"
            if len(mine) == 2 and int(mine[0]["step"]) == 0:
                # Only the start and the end scored: markers, not a line that would look like
                # a measured curve between them.
                style["ls"], label = "none", f"{label}, ends only"
            ax.plot(xs, [float(r[column]) for r in mine], ms=3, label=label, **style)
    for vit, ls, arch in ((False, "--", "ResNet-18"), (True, ":", "ViT")):
        random, _ = random_init(rows, specs, vit, column)
        if not math.isnan(random):
            ax.axhline(random, color="grey", ls=ls, lw=1, label=f"random {arch} ({random:.1f})")
    ax.set_xlabel("pretraining minutes (planned, reference machine, 2 CPU cores)")
    queries = "test" if column == "knn_top1" else "selection split (training images)"
    ax.set_ylabel(f"k-NN top-1 (%), CIFAR-10 {queries}")
    vit = any(is_vit(s) for s in specs)
    nets = "ResNet-18 small stem, ViT-Tiny/4" if vit else "ResNet-18 small stem"
    ax.set_title(f"CIFAR-10, {nets}: k-NN of each method's protocol encoder", fontsize=10)
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.png)
    print(f"plot: {args.png}")
