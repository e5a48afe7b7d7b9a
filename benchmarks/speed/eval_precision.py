"""What evaluation in bfloat16 costs and changes: feature throughput (images/s) of the race's
encoders in float32 and under bfloat16 autocast (each in NCHW and channels_last), and how far the
bfloat16 features and k-NN predictions are from the float32 ones.

The learning-curve race spends as long evaluating as training (a k-NN pass is 25,000 images
through the encoder per snapshot); on a CPU with AMX or AVX512-BF16 bfloat16 may make that pass
several times cheaper. Evaluation is only worth switching if the k-NN answer does not move, so
this script measures both on real CIFAR-10 images with a trained snapshot where one is given:

    python -m benchmarks.speed.eval_precision --threads 2 \\
        --snapshot ~/.cache/jepa-lightning/learning_curve/fair30/cnn_jepa/snap_000817.pt

Agreement columns compare against float32 NCHW: ``cos min`` is the smallest cosine similarity of
a pooled feature vector across the images; ``k-NN agree`` the share of test queries whose
predicted class (bank: ``--bank`` training images) is the same; ``top-1`` the k-NN accuracy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from benchmarks.common import cifar_datamodule_args
from benchmarks.curves.curve_methods import fresh_encoder
from benchmarks.curves.curve_report import EvalSets, pooled_features
from jepa_lightning import ImageFolderDataModule
from jepa_lightning.callbacks.metrics import weighted_knn_predict

MODES = [("fp32", False, False), ("fp32 channels_last", False, True),
         ("bf16", True, False), ("bf16 channels_last", True, True)]  # fmt: skip


def load(ds, n: int) -> tuple[Tensor, Tensor]:  # type: ignore[no-untyped-def]
    """``n`` images drawn at random (seed 0): an ImageFolder is sorted by class."""
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].tolist()
    return EvalSets._load(ds, idx, workers=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--spec", default="cnn_jepa", help="race method whose encoder is measured")
    ap.add_argument("--snapshot", default=None, help="a race snapshot (snap_*.pt); else random")
    ap.add_argument("--encoder", default="target", help="which encoder of the snapshot")
    ap.add_argument("--images", type=int, default=2000, help="test queries")
    ap.add_argument("--bank", type=int, default=5000, help="training images in the k-NN bank")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--data", default=None, help="CIFAR-10 ImageFolder root (train/, test/)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = fresh_encoder(args.spec)
    if args.snapshot:
        saved = torch.load(Path(args.snapshot).expanduser(), weights_only=True)
        encoder.load_state_dict(saved["states"][args.encoder])
    dm = ImageFolderDataModule(**cifar_datamodule_args(args.data, 256, 1))
    dm.setup()
    test, test_y = load(dm.val, args.images)
    bank, bank_y = load(dm.train_eval, args.bank)
    what = f"snapshot {args.encoder}" if args.snapshot else "random init"
    print(f"{args.spec} ({what}), {torch.get_num_threads()} threads, {args.images} queries, "
          f"bank {args.bank}")  # fmt: skip
    print(f"{'mode':<20} {'img/s':>7} {'speed-up':>8} {'cos min':>8} {'k-NN agree':>10} "
          f"{'top-1':>6}")  # fmt: skip
    ref: tuple[Tensor, Tensor, float] | None = None  # float32 NCHW: features, predictions, rate
    for name, bf16, cl in MODES:
        pooled_features(encoder, test[:500], bf16, cl)  # warm-up (allocator, oneDNN primitives)
        t0 = time.perf_counter()
        q = pooled_features(encoder, test, bf16, cl)
        rate = len(test) / (time.perf_counter() - t0)
        b = pooled_features(encoder, bank, bf16, cl)
        pred = weighted_knn_predict(q, b, bank_y, 10, 200, 0.1, 1)[:, 0]  # (Q,)
        ref = ref or (q, pred, rate)
        ref_q, ref_pred, base = ref
        cos = F.cosine_similarity(q, ref_q, dim=1).min().item()
        agree = 100 * (pred == ref_pred).double().mean().item()
        top1 = 100 * (pred == test_y).double().mean().item()
        print(f"{name:<20} {rate:7.0f} {rate / base:7.2f}x {cos:8.5f} {agree:9.2f}% {top1:6.2f}")


if __name__ == "__main__":
    main()
