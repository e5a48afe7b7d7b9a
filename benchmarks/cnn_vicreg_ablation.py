"""Does C-JEPA's VICReg regulariser help CNN-JEPA? An ablation on CIFAR-10 at equal wall-clock.

Trains CNN-JEPA (ResNet-18, small-image stem, 32 px) for the same wall-clock budget in each
variant and setting, then measures the EMA target encoder (what evaluation uses) on clean test
images: weighted k-NN top-1 (k = 200, τ = 0.1; bank = a seeded subset of the training split),
RankMe and the mean per-dimension std of the L2-normalised embeddings of the test split.

Variants (``--variants``):

* ``random`` — no pretraining (randomly initialised encoder), for reference;
* ``plain`` — the paper's CNN-JEPA (no regulariser);
* ``varcov`` — plus VICReg variance + covariance (weights 25 / 1, one view, no extra pass);
* ``vicreg`` — plus the full C-JEPA terms (25 / 25 / 1) with the invariance term on a second
  augmented view (two views: each step costs about twice as much).

Settings (``--settings``): ``default`` (EMA 0.99 -> 1.0 cosine) and ``stress`` (EMA momentum 0:
the target encoder *is* the online encoder, the setting in which a JEPA has nothing but its
predictor against collapse).

    python benchmarks/cnn_vicreg_ablation.py --budget-min 4
    python benchmarks/cnn_vicreg_ablation.py --budget-min 10 --vicreg-weight 0.01

Last line, machine-readable: ``knn_top1: default/plain=A default/varcov=B ...``.
"""

from __future__ import annotations

import argparse
import time

import lightning.pytorch as pl
import torch
from quality import cifar_datamodule_args, features, pretrain
from torch.utils.data import DataLoader, Subset

from jepa_lightning import CNNJEPA, ImageFolderDataModule
from jepa_lightning.callbacks.metrics import feature_std, knn_accuracy, rankme
from jepa_lightning.losses import VICRegTerms

VARIANTS = {  # (sim, std, cov) weights; None = no regulariser
    "random": None,  # no pretraining at all: the reference a short budget must beat
    "plain": None,
    "varcov": (0.0, 25.0, 1.0),
    "vicreg": (25.0, 25.0, 1.0),
}
SETTINGS = {"default": (0.99, 1.0), "stress": (0.0, 0.0)}  # EMA momentum start, end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=None, help="CIFAR-10 ImageFolder root (train/, test/)")
    ap.add_argument("--budget-min", type=float, default=4.0, help="pretraining minutes per run")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--vicreg-weight", type=float, default=0.001, help="β_vicreg (C-JEPA: 0.001)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bank-size", type=int, default=5000)
    ap.add_argument("--query-size", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    b = args.batch_size
    common = cifar_datamodule_args(args.data, b, args.workers)
    eval_dm = ImageFolderDataModule(**common)
    eval_dm.setup()
    g = torch.Generator().manual_seed(args.seed)
    bank_idx = torch.randperm(len(eval_dm.train_eval), generator=g)[: args.bank_size].tolist()
    query_idx = torch.randperm(len(eval_dm.val), generator=g)[: args.query_size].tolist()
    bank_loader = DataLoader(
        Subset(eval_dm.train_eval, bank_idx), batch_size=256, num_workers=args.workers
    )
    query_loader = DataLoader(
        Subset(eval_dm.val, query_idx), batch_size=256, num_workers=args.workers
    )

    rows = []
    for setting in args.settings:
        ema_start, ema_end = SETTINGS[setting]
        for variant in args.variants:
            weights = VARIANTS[variant]
            two_views = weights is not None and weights[0] != 0
            dm = ImageFolderDataModule(**common, num_views=2 if two_views else 1)

            def make(weights=weights, ema_start=ema_start, ema_end=ema_end) -> CNNJEPA:
                # NOTE: lr 0.01 @ 512 (paper) scaled linearly to the batch, as quality.py.
                return CNNJEPA(
                    backbone="resnet18", small_images=True, image_size=32,
                    optimizer=lambda p: torch.optim.AdamW(p, lr=0.01 * b / 512,
                                                          weight_decay=0.01),
                    warmup_epochs=0.0, ema_start=ema_start, ema_end=ema_end,
                    vicreg=None if weights is None else VICRegTerms(*weights),
                    vicreg_weight=args.vicreg_weight,
                )  # fmt: skip

            pl.seed_everything(args.seed)
            if variant == "random":
                if setting != args.settings[0]:
                    continue  # the same encoder in every setting
                model, info = make(), {"steps": 0, "epochs": 0.0, "wall_s": 0.0, "step_s": 0.0}
            else:
                model, info = pretrain(make, dm, args.budget_min * 60)
            t0 = time.perf_counter()
            fb, lb = features(model.target_encoder, bank_loader)
            fq, lq = features(model.target_encoder, query_loader)
            knn = knn_accuracy(fq, lq, fb, lb, num_classes=10, k=200, temperature=0.1, topk=(1,))[1]
            row = dict(
                setting=setting,
                variant=variant,
                knn=100 * knn,
                rankme=rankme(fq),
                std=feature_std(fq),
                eval_s=time.perf_counter() - t0,
                **info,
            )
            rows.append(row)
            print(row, flush=True)

    print(
        f"\n# CIFAR-10 (JPEG q75), CNN-JEPA ResNet-18 small stem, 32 px, batch {b}, "
        f"{args.budget_min:g} min per run, β_vicreg {args.vicreg_weight:g}, "
        f"{torch.get_num_threads()} threads; k-NN bank {len(bank_idx)} train / "
        f"{len(query_idx)} test images; RankMe/std on those test embeddings (D = 512)"
    )
    print("| setting | variant | steps | epochs | s/step | k-NN top-1 | RankMe | feature std |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['variant']} | {r['steps']} | {r['epochs']:.2f} | "
            f"{r['wall_s'] / max(r['steps'], 1):.3f} | {r['knn']:.2f} | {r['rankme']:.1f} | "
            f"{r['std']:.4f} |"
        )
    print("knn_top1: " + " ".join(f"{r['setting']}/{r['variant']}={r['knn']:.2f}" for r in rows))


if __name__ == "__main__":
    main()
