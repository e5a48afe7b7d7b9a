"""Reference points for the digits acceptance: pixels, a random ResNet-18 and BYOL.

Is "beats a random encoder on the embedded digits in minutes" a bar that self-supervised
pretraining can clear at all? This runs a standard non-JEPA method with the same backbone on the
same data and budget as the quickstart: BYOL from lightly's parts (``lightly_baselines.BYOL``,
lightly's CIFAR-10 recipe, batch 64) on two views (crops 0.4-1, no flip) of the digits. It
evaluates the EMA backbone after chosen epochs, the random init it starts from and the raw
pixels, all on the same cached whole-digit features: k-NN (k = 200, τ = 0.1, cosine;
the library's ``knn_accuracy``, as in the evaluations) and a standardised logistic-regression
probe (``quality.linear_probe``).

    python benchmarks/digits_byol.py --epochs 12 --eval-epochs 2 4 8 12
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from lightly_baselines import BYOL
from quality import features, linear_probe
from torch import Tensor, nn

from jepa_lightning import DigitsDataModule
from jepa_lightning.callbacks.metrics import knn_accuracy


def scores(tr: Tensor, ytr: Tensor, va: Tensor, yva: Tensor) -> tuple[float, float]:
    """k-NN top-1 and logistic-regression top-1 (%) of pooled features."""
    knn = knn_accuracy(va, yva, tr, ytr, num_classes=10, k=200, temperature=0.1, topk=(1,))[1]
    return 100 * knn, 100 * linear_probe(tr, ytr, va, yva)


def evaluate(backbone: nn.Module, data: DigitsDataModule) -> tuple[float, float]:
    return scores(*features(backbone, data.train_eval_dataloader()),
                  *features(backbone, data.val_dataloader()))  # fmt: skip


class EvaluateEpochs(pl.Callback):
    def __init__(
        self, epochs: list[int], data: DigitsDataModule, rows: list[tuple[str, float, float]]
    ) -> None:
        self.epochs, self.data, self.rows = epochs, data, rows

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch in self.epochs:
            result = evaluate(pl_module.backbone_momentum, self.data)
            self.rows.append((f"BYOL, epoch {epoch}", *result))
            pl_module.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--eval-epochs", type=int, nargs="+", help="default: the last epoch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = DigitsDataModule()
    data.setup("fit")

    def pixels(loader: torch.utils.data.DataLoader) -> tuple[Tensor, Tensor]:
        xs, ys = zip(*((x.flatten(1), y) for x, y in loader), strict=True)
        return torch.cat(xs), torch.cat(ys)

    rows = [("pixels (no network)", *scores(*pixels(data.train_eval_dataloader()),
                                            *pixels(data.val_dataloader())))]  # fmt: skip
    pl.seed_everything(args.seed)
    model = BYOL(batch_size=64)
    rows.append((f"random init (seed {args.seed})", *evaluate(model.backbone, data)))
    model.train()
    train_data = DigitsDataModule(num_views=2, crop_scale=(0.4, 1.0), hflip=False, batch_size=64)
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[EvaluateEpochs(args.eval_epochs or [args.epochs], data, rows)],
    )  # fmt: skip
    trainer.fit(model, train_data)
    print(f"\ndigits, 360 validation images; BYOL {args.epochs} epochs, seed {args.seed}")
    print("| features | k-NN top-1 | logistic top-1 |\n|---|---|---|")
    for name, knn, lin in rows:
        print(f"| {name} | {knn:.2f} | {lin:.2f} |")


if __name__ == "__main__":
    main()
