"""Does the EMA alone prevent collapse? I-JEPA vs C-JEPA with the EMA momentum forced.

Trains a small ViT on the embedded digits data with the real Trainer, once per method and EMA
setting, and reports collapse indicators of the pooled target-encoder embeddings (what
``embed`` and the monitors use) on the 360 validation images:

* RankMe (Garrido et al., 2023) = exp(entropy of the normalised singular values), 1 = collapsed
  (as in the paper on uncentred features, dominated by the shared mean direction of pooled ViT
  tokens; also on centred features, the rank of what varies between images);
* feature std = mean per-dimension std of the L2-normalised embeddings, 0 = collapsed;
* the mean per-dimension std of the raw context-encoder patch means (VICReg's variance target).

``--momentum 0`` makes the target a copy of the online encoder after every step (stop-gradient
only, no EMA), the setting in which I-JEPA has nothing but its predictor against collapse.

    python -m benchmarks.curves.collapse_cjepa --steps 60 --momentum 0.0
    python -m benchmarks.curves.collapse_cjepa --momentum 0.0 --modes ijepa views encoders blocks
"""

from __future__ import annotations

import argparse
import time

import lightning.pytorch as pl
import torch

from jepa_lightning import CJEPA, DigitsDataModule
from jepa_lightning.callbacks.metrics import feature_std, rankme


@torch.no_grad()
def indicators(model: CJEPA, dm: DigitsDataModule) -> dict[str, float]:
    model.eval()
    feats, ctx = [], []
    for images, _ in dm.val_dataloader():
        feats.append(model.embed(images))  # (B, D) target encoder, mean over patches
        ctx.append(model.context_encoder(images).mean(dim=1))  # (B, D) online, all patches
    f, c = torch.cat(feats), torch.cat(ctx)
    return {
        "rankme": rankme(f),
        "rankme_centred": rankme(f - f.mean(dim=0)),
        "feature_std": feature_std(f),
        "ctx_std": c.std(0).mean().item(),
    }


def run(mode: str, momentum: float, steps: int, seed: int, depth: int) -> dict[str, float]:
    pl.seed_everything(seed, verbose=False)
    vicreg = mode != "ijepa"
    model = CJEPA(
        arch="vit_tiny",
        patch_size=4,
        image_size=32,
        depth=depth,
        predictor_embed_dim=96,
        predictor_depth=1,
        vicreg_weight=0.001 if vicreg else 0.0,
        vicreg_mode=mode if vicreg else "views",
        ema_start=momentum,
        ema_end=momentum,
        ema_schedule="constant",
        warmup_epochs=0.2,
        warmup_start_lr_ratio=0.1,
        final_lr_ratio=0.1,
        final_weight_decay=None,
    )
    dm = DigitsDataModule(image_size=32, batch_size=64, num_views=2 if mode == "views" else 1)
    dm.setup()
    before = indicators(model, dm)
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, dm)
    after = indicators(model, dm)
    metrics = trainer.callback_metrics
    return {
        "rankme_init": before["rankme"],
        **after,
        "jepa_loss": float(metrics.get("train/jepa_loss_step", float("nan"))),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", nargs="+", default=["ijepa", "views"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"steps={args.steps} momentum={args.momentum} depth={args.depth} seed={args.seed}")
    print("| method | RankMe init | RankMe | centred | feat. std | ctx std | JEPA loss | s |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        r = run(mode, args.momentum, args.steps, args.seed, args.depth)
        name = "I-JEPA" if mode == "ijepa" else f"C-JEPA ({mode})"
        print(
            f"| {name} | {r['rankme_init']:.1f} | {r['rankme']:.1f} | {r['rankme_centred']:.1f} "
            f"| {r['feature_std']:.4f} "
            f"| {r['ctx_std']:.4f} | {r['jepa_loss']:.4f} | {r['seconds']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
