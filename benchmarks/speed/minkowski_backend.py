"""Masked-dense vs MinkowskiEngine sparse context encoder: forward+backward time and memory.

For each backend and mask ratio (fraction of grid cells masked), times a training-mode
forward+backward of the masked ResNet (median of repeats after warm-up) and measures the peak
resident memory of the step in a fresh subprocess (``ru_maxrss`` after the step minus before it,
so each row starts from the same state). Needs MinkowskiEngine (scripts/install_minkowski.sh).

    python -m benchmarks.speed.minkowski_backend          # ResNet-18 small stem, 32 px
    python -m benchmarks.speed.minkowski_backend --backbone resnet50 --image-size 224 \\
        --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from jepa_lightning.masking import RandomMasking
from jepa_lightning.modules import MaskedResNet


def measure(args: argparse.Namespace, backend: str, ratio: float) -> dict[str, float]:
    torch.manual_seed(0)
    enc = MaskedResNet(args.backbone, small_images=args.small_images, backend=backend).train()
    grid = args.image_size // enc.stride
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    g = torch.Generator().manual_seed(0)
    mask = RandomMasking(ratio)(args.batch_size, grid, grid, generator=g).context
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(args.warmup + args.steps):
        enc.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        enc(x, mask).square().mean().backward()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"s": statistics.median(times), "mem_mib": (peak - before) / 1024,
            "visible": float(mask.float().mean())}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--small-images", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.4, 0.6, 0.75])
    ap.add_argument("--backends", nargs="+", default=["masked_dense", "minkowski"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--one", nargs=2, metavar=("BACKEND", "RATIO"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.one:  # child process: one measurement, printed as JSON
        print(json.dumps(measure(args, args.one[0], float(args.one[1]))))
        return
    rows = []
    for ratio in args.ratios:
        for backend in args.backends:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--one", backend, str(ratio)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append((ratio, backend, json.loads(out.strip().splitlines()[-1])))
            print(rows[-1], flush=True)
    print(
        f"\n# {args.backbone} small_images={args.small_images} {args.image_size} px, batch "
        f"{args.batch_size}, train-mode forward+backward, CPU x{torch.get_num_threads()}, "
        f"median of {args.steps}"
    )
    print("| mask ratio | backend | s / fwd+bwd | vs masked_dense | peak RSS growth (MiB) |")
    print("|---|---|---|---|---|")
    base = {r: m["s"] for r, b, m in rows if b == "masked_dense"}
    for ratio, backend, m in rows:
        rel = f"{m['s'] / base[ratio]:.2f}×" if ratio in base else "-"
        print(f"| {ratio:.2f} | {backend} | {m['s']:.3f} | {rel} | {m['mem_mib']:.0f} |")


if __name__ == "__main__":
    main()
