"""The quickstart recipe against a random initialisation on the embedded digits, over seeds.

For every seed: pretrain ``configs/quickstart.yaml`` through the real CLI (monitors and logger
left out, a checkpoint after every epoch; extra CLI arguments change the recipe), then run
``configs/eval/linear_digits.yaml`` on chosen epochs' checkpoints and on the random init of the
same seed (= the pretraining's starting weights). Prints linear / k-NN top-1 per seed and epoch
and the gap to random init.

    python benchmarks/digits_vs_random.py --seeds 0 1 2
    python benchmarks/digits_vs_random.py --seeds 1 --epochs 30 --eval-epochs 6 12 30
    python benchmarks/digits_vs_random.py --seeds 0 -- --data.init_args.batch_size 32
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from jepa_lightning.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]  # fmt: skip


def evaluate(checkpoint: Path | None, seed: int, root: Path) -> tuple[float, float]:
    """Linear top-1 and k-NN top-1 of ``configs/eval/linear_digits.yaml``."""
    args = ["fit", "--config", str(CONFIGS / "eval/linear_digits.yaml"), *QUIET,
            "--trainer.default_root_dir", str(root), "--seed_everything", str(seed)]  # fmt: skip
    if checkpoint is not None:
        args += ["--model.init_args.checkpoint", str(checkpoint)]
    cli = main(args)
    return float(cli.trainer.callback_metrics["val/top1"]), cli.model.knn_result[1]


def pretrain(seed: int, epochs: int, extra: list[str], root: Path) -> float:
    """The quickstart through the CLI with a checkpoint per epoch; returns the wall time."""
    cfg = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    cfg["seed_everything"] = seed
    cfg["trainer"].update(
        max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(root), limit_val_batches=0,
        callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(root / "ck"), "save_top_k": -1,
                                  "every_n_epochs": 1, "filename": "{epoch}"}}],
    )  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    main(["fit", "--config", str(root / "config.yaml"), *extra])
    return time.perf_counter() - t0


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12, help="pretraining schedule length")
    parser.add_argument("--eval-epochs", type=int, nargs="+", help="default: the last epoch")
    parser.add_argument("extra", nargs="*", help="CLI overrides of the recipe, after --")
    args = parser.parse_args()
    eval_epochs = args.eval_epochs or [args.epochs]
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            random_lin, random_knn = evaluate(None, seed, root)
            seconds = pretrain(seed, args.epochs, args.extra, root)
            for epoch in eval_epochs:
                lin, knn = evaluate(root / "ck" / f"epoch={epoch - 1}.ckpt", seed, root)
                rows.append((seed, epoch, seconds, lin, knn, random_lin, random_knn))
    print(f"\nrecipe: configs/quickstart.yaml, {args.epochs} epochs {' '.join(args.extra)}")
    print(
        "| seed | epoch | pretrain (s) | linear | k-NN | random linear | random k-NN "
        "| Δ linear | Δ k-NN |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for seed, epoch, s, lin, knn, rl, rk in rows:
        cells = [f"{100 * v:.2f}" for v in (lin, knn, rl, rk)]
        cells += [f"{100 * (lin - rl):+.2f}", f"{100 * (knn - rk):+.2f}"]
        print(f"| {seed} | {epoch} | {s:.0f} | " + " | ".join(cells) + " |")
    wins = sum(r[3] > r[5] and r[4] > r[6] for r in rows)
    print(f"beats random init on both measures: {wins}/{len(rows)}")


if __name__ == "__main__":
    main_cli()
