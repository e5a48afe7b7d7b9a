"""Representation-collapse monitor: RankMe and feature spread of the validation embeddings."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from jepa_lightning.callbacks._features import ValFeaturesMonitor, eval_mode, split_batch
from jepa_lightning.callbacks.metrics import feature_std, rankme, target_shares


class CollapseMonitor(ValFeaturesMonitor):
    """Logs, per validation epoch, two label-free collapse indicators of ``pl_module.embed``
    on the validation split (gathered and de-duplicated across processes):

    * ``collapse/rankme`` — RankMe (Garrido et al., 2023), the smooth effective rank of the
      ``(N, D)`` embedding matrix: about 1 when collapsed, up to ``min(N, D)``; it tracks
      downstream accuracy and needs no labels. Use ``N`` well above ``D`` (the paper uses
      25,600 samples) or it is capped by ``N``.
    * ``collapse/feature_std`` — mean per-dimension std of the L2-normalised embeddings: 0 when
      all embeddings coincide, about ``1/√D`` when spread uniformly on the sphere.

    * ``collapse/target_share_{batch_mean,position,image}`` — how much of the per-cell
      L2-normalised target map (``pl_module.target_map``, eval mode) is the same for every
      image, predictable from the cell's position alone, or dependent on the image
      (:func:`~jepa_lightning.callbacks.metrics.target_shares`; they sum to 1). A predictor
      can lower the JEPA loss on the first two without looking at the image: watch
      ``target_share_image`` fall for the shortcut that precedes collapse.

    The embedding of each validation batch is shared with the other monitors (computed once).

    Args:
        every_n_epochs: Run on epochs ``0, n, 2n, ...`` and the last one (``max_epochs``).
        eps: The ``ε`` added to the normalised singular values (paper: 1e-7).
        decomposition_batches: Validation batches (per process) whose target maps the shares
            are computed on (one extra target-encoder forward each); 0 disables them. Modules
            without a ``target_map`` method are skipped.

    Example:
        >>> import lightning.pytorch as pl
        >>> from jepa_lightning import CollapseMonitor
        >>> monitor = CollapseMonitor(every_n_epochs=5)
        >>> trainer = pl.Trainer(callbacks=[monitor], accelerator="cpu", logger=False)
        >>> # trainer.fit(model, datamodule) logs collapse/rankme, collapse/feature_std, ...
        >>> monitor.last_result  # filled after each monitored validation epoch
        {}
    """

    def __init__(
        self, every_n_epochs: int = 1, eps: float = 1e-7, decomposition_batches: int = 4
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError("every_n_epochs must be >= 1")
        if decomposition_batches < 0:
            raise ValueError("decomposition_batches must be >= 0")
        super().__init__(every_n_epochs)
        self.eps = eps
        self.decomposition_batches = decomposition_batches
        self._unit_sum: Tensor | None = None  # (C, h, w) sum of unit target vectors
        self._count = 0
        self.last_result: dict[str, float] = {}
        """``rankme``, ``feature_std``, ``num_samples`` and the target shares of the last run."""

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        if self._val.active:
            self._unit_sum, self._count = None, 0

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        args = (trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        super().on_validation_batch_end(*args)
        take = batch_idx < self.decomposition_batches and dataloader_idx == 0
        if self._val.active and take and self._has_maps(pl_module):
            images, _ = split_batch(batch)
            with eval_mode(pl_module), torch.no_grad(), trainer.precision_plugin.val_step_context():
                maps = pl_module.target_map(images)  # (B, C, h, w)
            unit = F.normalize(maps.float(), dim=1).sum(dim=0)  # (C, h, w)
            self._unit_sum = unit if self._unit_sum is None else self._unit_sum + unit
            self._count += maps.shape[0]

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
        shares = self._shares(pl_module)
        for key, value in shares.items():
            self.last_result[f"target_share_{key}"] = value
            pl_module.log(f"collapse/target_share_{key}", value, on_epoch=True, sync_dist=True)

    @staticmethod
    def _has_maps(pl_module: pl.LightningModule) -> bool:
        return callable(getattr(pl_module, "target_map", None))

    def _shares(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """Target shares over every process's decomposition batches (collective)."""
        if self.decomposition_batches == 0 or not self._has_maps(pl_module):
            return {}
        world = pl_module.trainer.world_size
        unit, count = self._unit_sum, float(self._count)
        if world > 1:  # every rank saw batches (validation is sharded evenly): sum them
            if unit is None:
                raise RuntimeError("a process collected no target maps for the shares")
            unit = pl_module.all_gather(unit).sum(dim=0)
            count = float(pl_module.all_gather(torch.tensor(count, device=unit.device)).sum())
        self._unit_sum, self._count = None, 0
        if unit is None or count == 0:
            return {}
        return target_shares(unit / count)
