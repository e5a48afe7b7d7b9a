"""Training-step cost of CNN-JEPA against BYOL, SimCLR and VICReg (lightly) at equal settings.

Each method runs full training steps on synthetic in-memory images: forward, loss, backward,
optimiser step and (where the method has one) the EMA update. Methods are timed interleaved, one
step each per round, so drift in machine load hits all of them alike; the table reports medians.

    python -m benchmarks.speed.throughput          # CPU: ResNet-18, 64 px, batch 64
    python -m benchmarks.speed.throughput --device cuda --backbone resnet50 --image-size 224 \\
        --batch-size 128 --precision bf16 --channels-last
    python -m benchmarks.speed.throughput --vit vit_small --vit-patch 8   # + I-JEPA / C-JEPA rows

The last line is machine-readable:
``ratios: byol=R simclr=R vicreg=R dense=R`` — CNN-JEPA step time divided by each baseline's, and
``dense`` = masked encoder forward+backward over the same encoder's dense forward+backward.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from lightly.loss import NTXentLoss, VICRegLoss
from lightly.models.modules.heads import SimCLRProjectionHead, VICRegProjectionHead
from torch import Tensor, nn

from benchmarks.common import Byol, trunk
from jepa_lightning import CJEPA, CNNJEPA, IJEPA
from jepa_lightning.callbacks.ema import ema_update
from jepa_lightning.masking import RandomMasking


class Contrastive(nn.Module):
    def __init__(self, arch: str, small: bool, kind: str) -> None:
        super().__init__()
        self.backbone = trunk(arch, small)
        dim = self.backbone(torch.zeros(2, 3, 32, 32)).shape[1]
        if kind == "simclr":
            self.head: nn.Module = SimCLRProjectionHead(dim, dim, 128)
            self.criterion: nn.Module = NTXentLoss()
        else:
            self.head = VICRegProjectionHead(dim, 2048, 2048)
            self.criterion = VICRegLoss()

    def loss(self, x0: Tensor, x1: Tensor) -> Tensor:
        return self.criterion(self.head(self.backbone(x0)), self.head(self.backbone(x1)))

    def ema(self) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--small-images", action="store_true", help="3x3 stem, no max-pool")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["32", "bf16"], default="32")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile CNN-JEPA's modules")
    ap.add_argument(
        "--masking",
        choices=["auto", "mixed", "random"],
        default="auto",
        help="auto: the paper's mixed masking if the grid is >= 4x4, else random 50%% (the cost "
        "of masked-dense convolution does not depend on the pattern)",
    )
    ap.add_argument(
        "--vit",
        default=None,
        help="also time I-JEPA and C-JEPA (views mode, two views) with this ViT (e.g. "
        "vit_small) at --vit-patch; the ratios line stays CNN-JEPA's",
    )
    ap.add_argument("--vit-patch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=7, help="timed rounds")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    autocast = (
        torch.autocast(dev.type, dtype=torch.bfloat16)
        if args.precision == "bf16"
        else contextlib.nullcontext()
    )
    torch.manual_seed(0)
    b, s = args.batch_size, args.image_size
    views = [torch.randn(b, 3, s, s, device=dev).contiguous(memory_format=fmt) for _ in range(2)]

    stride = 8 if args.small_images else 32
    masking = args.masking
    if masking == "auto":
        masking = "mixed" if s // stride >= 4 else "random"
    args.masking = masking
    jepa = CNNJEPA(
        backbone=args.backbone,
        small_images=args.small_images,
        image_size=s,
        channels_last=args.channels_last,
        compile=args.compile,
        masking=RandomMasking(0.5) if masking == "random" else None,
    ).to(dev)
    models: dict[str, nn.Module] = {
        "byol": Byol(args.backbone, args.small_images),
        "simclr": Contrastive(args.backbone, args.small_images, "simclr"),
        "vicreg": Contrastive(args.backbone, args.small_images, "vicreg"),
    }
    for m in models.values():
        m.to(dev).to(memory_format=fmt)  # type: ignore[call-overload]
    opts = {
        k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad])
        for k, m in models.items()
    }
    jepa_opt = torch.optim.AdamW(jepa.parameter_groups())
    vits: dict[str, tuple[CJEPA, torch.optim.Optimizer]] = {}
    if args.vit:
        for name, cls in (("ijepa", IJEPA), ("cjepa", CJEPA)):
            vit = cls(arch=args.vit, patch_size=args.vit_patch, image_size=s).to(dev)
            vits[name] = (vit, torch.optim.AdamW(vit.parameter_groups()))
    two_views = torch.stack(views, dim=1)  # (B, 2, 3, H, W) for C-JEPA's views mode
    enc = jepa.context_encoder
    enc_opt = torch.optim.AdamW(enc.parameters())
    grid_masks = jepa.sample_masks(b)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step_fn(name: str) -> Callable[[], None]:
        def run() -> None:
            if name in vits:
                vit, opt = vits[name]
                opt.zero_grad(set_to_none=True)
                with autocast:
                    x = two_views if name == "cjepa" else views[0]
                    loss = vit.shared_step(x)["loss"]
                loss.backward()
                opt.step()
                ema_update(vit.context_encoder, vit.target_encoder, 0.996)
            elif name == "cnn_jepa":
                jepa_opt.zero_grad(set_to_none=True)
                with autocast:
                    loss = jepa.shared_step(views[0])["loss"]
                loss.backward()
                jepa_opt.step()
                ema_update(jepa.context_encoder, jepa.target_encoder, 0.996)
            elif name in ("masked_enc", "dense_enc"):
                enc_opt.zero_grad(set_to_none=True)
                with autocast:
                    mask = grid_masks.context if name == "masked_enc" else None
                    out = enc(views[0], mask)
                out.float().mean().backward()
                enc_opt.step()
            else:
                model, opt = models[name], opts[name]
                opt.zero_grad(set_to_none=True)
                with autocast:
                    loss = model.loss(views[0], views[1])  # type: ignore[operator]
                loss.backward()
                opt.step()
                model.ema()  # type: ignore[operator]

        return run

    names = ["cnn_jepa", "byol", "simclr", "vicreg", "masked_enc", "dense_enc", *vits]
    times: dict[str, list[float]] = {n: [] for n in names}
    peak: dict[str, float] = {}
    for r in range(args.warmup + args.steps):
        for n in names:
            fn = step_fn(n)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if r >= args.warmup:
                times[n].append(time.perf_counter() - t0)
            if dev.type == "cuda":
                peak[n] = torch.cuda.max_memory_allocated() / 2**30
    med = {n: statistics.median(v) for n, v in times.items()}
    name = torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(
        f"# {args.backbone} small_images={args.small_images} {s}px batch {b} {args.precision} "
        f"channels_last={args.channels_last} compile={args.compile} masking={args.masking} "
        f"on {name}, median of {args.steps} steps"
    )
    print(f"| {'step':<12} | {'s/step':>8} | {'img/s':>8} | {'peak GiB':>8} | {'CNN-JEPA /':>10} |")
    print(f"|{'-' * 14}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 12}|")
    for n in names:
        pk = f"{peak[n]:.2f}" if n in peak else "-"
        ratio = f"{med['cnn_jepa'] / med[n]:.3f}"
        print(f"| {n:<12} | {med[n]:>8.4f} | {b / med[n]:>8.1f} | {pk:>8} | {ratio:>10} |")
    mask_s = []  # one batch of masks, drawn on the device inside the CNN-JEPA step
    for _ in range(20):
        sync()
        t0 = time.perf_counter()
        jepa.sample_masks(b)
        sync()
        mask_s.append(time.perf_counter() - t0)
    mask_med = statistics.median(mask_s)
    print(
        f"mask generation ({masking}, {jepa.grid}x{jepa.grid} grid, batch {b}): "
        f"{1e3 * mask_med:.2f} ms = {100 * mask_med / med['cnn_jepa']:.1f} % of the CNN-JEPA step"
    )
    r = {k: med["cnn_jepa"] / med[k] for k in ("byol", "simclr", "vicreg")}
    dense = med["masked_enc"] / med["dense_enc"]
    print(
        f"ratios: byol={r['byol']:.3f} simclr={r['simclr']:.3f} vicreg={r['vicreg']:.3f} "
        f"dense={dense:.3f}"
    )


if __name__ == "__main__":
    main()
