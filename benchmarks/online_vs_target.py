"""Online (context) against EMA target encoder of a CNN-JEPA checkpoint, on the learning curve's
evaluation (weighted k-NN k = 200, tau = 0.1 and RankMe on clean CIFAR-10 images).

The learning curve evaluates the EMA target. Near the end of a short run (hundreds of steps at
EMA 0.996 -> 1) the target averages the last few hundred online weights, so it may lag the
online encoder; and the online encoder's BatchNorm statistics were gathered on masked images.
This script measures both, plus the online encoder with its BatchNorm statistics recomputed on
clean training images::

    python benchmarks/online_vs_target.py \
        ~/.cache/jepa-lightning/learning_curve/main/cnn_jepa/last.ckpt --data ~/data/cifar10_jpg
"""

from __future__ import annotations

import argparse
import copy

import torch
from curve_report import _eval_sets, _features
from torch import Tensor, nn

from jepa_lightning.callbacks.metrics import knn_accuracy, rankme
from jepa_lightning.modules import MaskedResNet, recalibrate_batchnorm


def encoder_from(state: dict[str, Tensor], prefix: str, last_stride: int) -> nn.Module:
    enc = MaskedResNet("resnet18", small_images=True, last_stride=last_stride)
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    enc.load_state_dict(sub)
    return enc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", nargs="+", help="Lightning checkpoints of CNNJEPA runs")
    ap.add_argument("--data", required=True)
    ap.add_argument("--bank-size", type=int, default=10000)
    ap.add_argument("--test-size", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--last-stride", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bank, bank_y, test, test_y = _eval_sets(args)
    print("| checkpoint | step | encoder | k-NN top-1 | RankMe |")
    print("|---|---|---|---|---|")
    for path in args.ckpt:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        state = ck["state_dict"]
        context = encoder_from(state, "context_encoder.", args.last_stride)
        encoders = {
            "EMA target": encoder_from(state, "target_encoder.", args.last_stride),
            "online (context)": context,
            "online, BN recalibrated": recalibrate_batchnorm(
                copy.deepcopy(context), bank[:5000].split(256)
            ),
        }
        for name, enc in encoders.items():
            fb, fq = _features(enc, bank), _features(enc, test)
            knn = knn_accuracy(fq, test_y, fb, bank_y, num_classes=10, topk=(1,))[1]
            print(f"| {path} | {ck['global_step']} | {name} | {100 * knn:.2f} "
                  f"| {rankme(fq):.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
