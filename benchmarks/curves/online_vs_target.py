"""Online (context) against EMA target encoder of a CNN-JEPA or C-JEPA/I-JEPA checkpoint, on the
learning curve's evaluation (weighted k-NN k = 200, tau = 0.1 and RankMe on clean CIFAR-10 images).

The learning curve evaluates the EMA target. Near the end of a short run (hundreds of steps at
EMA 0.996 -> 1) the target averages the last few hundred online weights, so it may lag the
online encoder; and the online encoder's BatchNorm statistics were gathered on masked images.
This script measures both, plus the online encoder with its BatchNorm statistics recomputed on
clean training images (CNN-JEPA only: the ViT has no BatchNorm)::

    python -m benchmarks.curves.online_vs_target \
        ~/.cache/jepa-lightning/learning_curve/main/cnn_jepa/last.ckpt --data ~/data/cifar10_jpg
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import Tensor, nn

from benchmarks.curves.curve_methods import TokenGrid
from benchmarks.curves.curve_report import EvalSets
from jepa_lightning.modules import MaskedResNet, recalibrate_batchnorm
from jepa_lightning.modules.vit import ViTEncoder


def encoder_from(ck: dict, prefix: str, last_stride: int) -> nn.Module:
    """The encoder under ``prefix`` in a checkpoint: a small-image ResNet-18 (CNN-JEPA) or, for
    C-JEPA/I-JEPA, the checkpoint's ViT as a token grid (evaluated like the learning curve)."""
    state: dict[str, Tensor] = ck["state_dict"]
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if "conv_proj.weight" in sub:  # a ViT
        hp = ck["hyper_parameters"]
        enc: nn.Module = ViTEncoder(hp["arch"], hp["image_size"], hp["patch_size"], hp["depth"])
        enc.load_state_dict(sub)
        return TokenGrid(enc)
    enc = MaskedResNet("resnet18", small_images=True, last_stride=last_stride)
    enc.load_state_dict(sub)
    return enc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", nargs="+", help="Lightning checkpoints of CNNJEPA or CJEPA runs")
    ap.add_argument("--data", required=True)
    ap.add_argument("--bank-size", type=int, default=10000)
    ap.add_argument("--sel-size", type=int, default=5000, help="selection queries (train images)")
    ap.add_argument("--test-size", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--last-stride", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sets = EvalSets(args)
    print("| checkpoint | step | encoder | k-NN sel | k-NN test | RankMe |")
    print("|---|---|---|---|---|---|")
    for path in args.ckpt:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        context = encoder_from(ck, "context_encoder.", args.last_stride)
        encoders = {
            "EMA target": encoder_from(ck, "target_encoder.", args.last_stride),
            "online (context)": context,
        }
        if isinstance(context, MaskedResNet):
            encoders["online, BN recalibrated"] = recalibrate_batchnorm(
                copy.deepcopy(context), sets.bank[:5000].split(256)
            )
        for name, enc in encoders.items():
            s = sets.score(enc)
            print(f"| {path} | {ck['global_step']} | {name} | {s['sel']:.2f} | {s['test']:.2f} "
                  f"| {s['rankme']:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
