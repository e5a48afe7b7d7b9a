"""k-NN evaluation of a pretrained encoder, run with ``jepa-lightning validate``."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

from jepa_lightning.callbacks.knn import KNNMonitor
from jepa_lightning.evaluation.pretrained import EncoderChoice, EvaluationModule, MethodSpec
from jepa_lightning.methods.base import JEPAModule


class KNNEvaluation(EvaluationModule):
    """Weighted k-NN accuracy of the frozen pretrained encoder (the CNN-JEPA paper's protocol:
    EMA target encoder average-pooled, cosine similarity, ``k = 200`` neighbours voting with
    weight ``exp(sim / τ)``, ``τ = 0.1``).

    ``jepa-lightning validate --config configs/eval/knn_digits.yaml
    --model.init_args.checkpoint PATH`` embeds the validation split batch by batch and a bank
    of the labelled training split with the clean evaluation transform
    (``train_eval_dataloader()``), once, gathered across processes, and logs ``knn/top1`` and
    ``knn/top5``. The work is done by :class:`~jepa_lightning.KNNMonitor`, which this module
    attaches to the trainer; the last result is in :attr:`result`.

    Args:
        checkpoint: Pretraining checkpoint; ``None`` = randomly initialised ``method``.
        method: ``{class_path, init_args}`` of the method (see :class:`EvaluationModule`).
        encoder: ``target`` (EMA, default) or ``context``.
        image_size: Image side produced by the DataModule (linked by the CLI).
        k: Number of neighbours.
        temperature: Temperature ``τ`` of the vote weights.
        max_bank_size: Use a fixed random subset of this many training images as the bank;
            ``None`` uses them all.
        num_classes: Number of classes; ``None`` reads the DataModule's.

    Example:
        >>> import torch
        >>> from jepa_lightning import CNNJEPA, KNNEvaluation
        >>> model = CNNJEPA(backbone="resnet18", small_images=True, image_size=32)
        >>> knn = KNNEvaluation(method=model, k=20)  # a module from Python is used as it is
        >>> knn.embed(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 512])
        >>> # trainer.validate(knn, datamodule); knn.result["top1"]
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        method: MethodSpec | JEPAModule | None = None,
        encoder: EncoderChoice = "target",
        image_size: int = 224,
        k: int = 200,
        temperature: float = 0.1,
        max_bank_size: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(checkpoint, method, encoder, image_size)
        self.pretrained.requires_grad_(False)
        self.monitor = KNNMonitor(
            k=k,
            temperature=temperature,
            every_n_epochs=1,
            max_bank_size=max_bank_size,
            num_classes=num_classes,
        )

    @property
    def result(self) -> dict[str, float]:
        """``top1``, ``top5``, ``bank_size``, ``num_queries`` and ``seconds`` of the last run."""
        return self.monitor.last_result

    def configure_callbacks(self) -> list[Callback]:
        return [self.monitor]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Nothing to do per batch here: the k-NN callback embeds each validation batch."""
