"""Input-pipeline throughput: JPEG decode + the CNN-JEPA augmentation, images/s per worker.

Writes a temporary ImageFolder of JPEGs at an ImageNet-like size (default 500×375, quality 90,
smooth random content so the JPEGs have realistic sizes), then times a single process (= one
DataLoader worker) decoding and transforming them with the library's own transforms, and the
DataLoader with several workers. Use it to choose ``data.init_args.num_workers`` for a GPU:
workers needed ≈ GPU images/s (benchmarks/speed/throughput.py) ÷ images/s per worker.

    python -m benchmarks.speed.input_pipeline --images 256 --workers 0 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from jepa_lightning.data.transforms import eval_transform, ssl_transform


def write_jpegs(root: Path, n: int, width: int, height: int) -> None:
    g = torch.Generator().manual_seed(0)
    (root / "class0").mkdir(parents=True)
    for i in range(n):
        low = torch.rand(1, 3, height // 16, width // 16, generator=g)
        img = F.interpolate(low, size=(height, width), mode="bicubic").clamp(0, 1)[0]
        arr = (img.permute(1, 2, 0) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(root / "class0" / f"{i}.jpg", quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpegs(root, args.images, args.width, args.height)
        rows = []
        for name, tf in (
            ("decode only", None),
            ("decode + SSL aug", ssl_transform(args.image_size)),
            ("decode + eval", eval_transform(args.image_size)),
        ):
            ds = ImageFolder(str(root), transform=tf)
            t0 = time.perf_counter()
            for i in range(len(ds)):
                ds[i]
            rows.append((name, "1 process", len(ds) / (time.perf_counter() - t0)))
        ds = ImageFolder(str(root), transform=ssl_transform(args.image_size))
        for w in args.workers:
            loader = DataLoader(ds, batch_size=args.batch_size, num_workers=w)
            t0 = time.perf_counter()
            for _ in loader:
                pass
            rows.append(("SSL DataLoader", f"{w} workers", len(ds) / (time.perf_counter() - t0)))
    print(f"# {args.width}x{args.height} JPEG q90 -> {args.image_size}px, {args.images} images")
    print(f"| {'pipeline':<18} | {'processes':<10} | {'img/s':>8} |")
    print(f"|{'-' * 20}|{'-' * 12}|{'-' * 10}|")
    for name, procs, ips in rows:
        print(f"| {name:<18} | {procs:<10} | {ips:>8.1f} |")


if __name__ == "__main__":
    main()
