"""Representation-collapse monitor: RankMe and feature spread of the validation embeddings."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from jepa_lightning.callbacks._features import ValFeatures
from jepa_lightning.callbacks.knn import epoch_due
from jepa_lightning.callbacks.metrics import feature_std, rankme


class CollapseMonitor(Callback):
    """Logs, per validation epoch, two label-free collapse indicators of ``pl_module.embed``
    on the validation split (gathered and de-duplicated across processes):

    * ``collapse/rankme`` — RankMe (Garrido et al., 2023), the smooth effective rank of the
      ``(N, D)`` embedding matrix: about 1 when collapsed, up to ``min(N, D)``; it tracks
      downstream accuracy and needs no labels. Use ``N`` well above ``D`` (the paper uses
      25,600 samples) or it is capped by ``N``.
    * ``collapse/feature_std`` — mean per-dimension std of the L2-normalised embeddings: 0 when
      all embeddings coincide, about ``1/√D`` when spread uniformly on the sphere.

    The embedding of each validation batch is shared with the other monitors (computed once).

    Args:
        every_n_epochs: Run on epochs ``0, n, 2n, ...`` and the last one (``max_epochs``).
        eps: The ``ε`` added to the normalised singular values (paper: 1e-7).
    """

    def __init__(self, every_n_epochs: int = 1, eps: float = 1e-7) -> None:
        if every_n_epochs < 1:
            raise ValueError("every_n_epochs must be >= 1")
        self.every_n_epochs = every_n_epochs
        self.eps = eps
        self._val = ValFeatures()
        self.last_result: dict[str, float] = {}
        """``rankme``, ``feature_std`` and ``num_samples`` of the last run."""

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and epoch_due(trainer, self.every_n_epochs):
            self._val.start(trainer)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._val.add(trainer, pl_module, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._val.active:
            return
        val = self._val.finish(pl_module)
        if val is None:
            return
        features, _ = val  # (N, D), identical on every rank
        self.last_result = {
            "rankme": rankme(features, self.eps),
            "feature_std": feature_std(features),
            "num_samples": float(features.shape[0]),
        }
        for key in ("rankme", "feature_std"):
            pl_module.log(f"collapse/{key}", self.last_result[key], on_epoch=True, sync_dist=True)
