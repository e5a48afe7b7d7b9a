"""Pictures of the masks and of the predictor's per-cell quality, logged to TensorBoard."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchvision.utils import make_grid

from jepa_lightning.callbacks._features import epoch_due, eval_mode, split_batch

_TARGET_RGB = (1.0, 0.15, 0.1)
_LOW_RGB = (0.15, 0.3, 1.0)  # similarity -1
_HIGH_RGB = (1.0, 0.2, 0.1)  # similarity +1


def _cells_to_pixels(cells: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, h, w)`` cell values -> ``(B, 1, H, W)`` by nearest-neighbour upsampling."""
    return F.interpolate(cells[:, None].float(), size=size, mode="nearest")


def similarity_colormap(similarity: Tensor) -> Tensor:
    """Diverging colour map ``(B, H, W)`` in [-1, 1] -> ``(B, 3, H, W)``: blue (−1), white (0),
    red (+1)."""
    s = similarity.nan_to_num(0.0).clamp(-1, 1)[:, None]  # (B, 1, H, W)
    low = torch.tensor(_LOW_RGB, device=s.device).view(1, 3, 1, 1)
    high = torch.tensor(_HIGH_RGB, device=s.device).view(1, 3, 1, 1)
    end = torch.where(s >= 0, high, low)
    return torch.lerp(torch.ones_like(end), end, s.abs())


def mask_panels(
    images: Tensor, context: Tensor, target: Tensor, similarity: Tensor, min_size: int = 128
) -> Tensor:
    """One row of three panels per image: the image; the image with target cells tinted red,
    context cells as they are and cells in neither darkened; the per-cell cosine similarity of
    prediction and target as a heat map over a grey copy of the image (target cells outlined
    by a darker border).

    Args:
        images: ``(B, 3, H, W)`` in [0, 1].
        context: ``(B, h, w)`` bool, visible cells.
        target: ``(B, h, w)`` bool, cells to predict.
        similarity: ``(B, h, w)`` float in [-1, 1].
        min_size: Upscale (nearest) so that panels are at least this many pixels high.

    Returns:
        A ``(3, H', W')`` image grid in [0, 1].
    """
    h, w = images.shape[-2:]
    size = (h, w)
    ctx = _cells_to_pixels(context, size)  # (B, 1, H, W)
    tgt = _cells_to_pixels(target, size)
    neither = (1 - ctx) * (1 - tgt)
    red = torch.tensor(_TARGET_RGB, device=images.device).view(1, 3, 1, 1)
    masks = images * (1 - 0.7 * neither)
    masks = torch.lerp(masks, red.expand_as(masks), 0.55 * tgt)
    grey = images.mean(dim=1, keepdim=True).expand_as(images)
    heat = similarity_colormap(_cells_to_pixels(similarity, size)[:, 0])
    heat = 0.7 * heat + 0.3 * grey
    edge = tgt - F.max_pool2d(-tgt, 3, stride=1, padding=1).neg()  # inner border of targets
    heat = heat * (1 - 0.6 * edge.clamp(0, 1))
    panels = torch.stack([images, masks, heat], dim=1).flatten(0, 1)  # (3B, 3, H, W)
    scale = max(1, -(-min_size // h))
    if scale > 1:
        panels = F.interpolate(panels, scale_factor=scale, mode="nearest")
    return make_grid(panels.clamp(0, 1).float().cpu(), nrow=3, padding=2, pad_value=1.0)


class MaskImageLogger(Callback):
    """Every ``every_n_epochs`` validation epochs, logs to TensorBoard (``masks/preview``) a
    few validation images with their context and target cells and a heat map of the per-cell
    cosine similarity of prediction and target, from ``pl_module.mask_preview(images)``
    (CNN-JEPA). Modules without ``mask_preview`` are skipped with a one-time warning, as are
    loggers without ``add_image``. Images are un-normalised with the DataModule's ``mean`` and
    ``std``. The module's mask RNG is restored afterwards, so validation masks (and the
    validation loss) are the same with or without this callback. Rank 0 only.

    Args:
        every_n_epochs: Log on epochs ``0, n, 2n, ...`` and the last one (``max_epochs``).
        num_images: Number of images (rows) from the first validation batch.
        min_size: Upscale panels (nearest) to at least this height in pixels.
        tag: TensorBoard image tag.

    Example:
        >>> import lightning.pytorch as pl
        >>> from jepa_lightning import MaskImageLogger
        >>> logger = MaskImageLogger(num_images=4, every_n_epochs=10)
        >>> trainer = pl.Trainer(callbacks=[logger], accelerator="cpu", logger=False)
        >>> # with a TensorBoard logger, trainer.fit(...) writes the pictures every 10 epochs
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_images: int = 8,
        min_size: int = 128,
        tag: str = "masks/preview",
    ) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError("every_n_epochs and num_images must be >= 1")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.min_size = min_size
        self.tag = tag
        self._warned: set[str] = set()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            rank_zero_warn(message)
            self._warned.add(key)

    @staticmethod
    def _unnormalise(images: Tensor, trainer: pl.Trainer) -> Tensor:
        dm = trainer.datamodule
        mean: Sequence[float] | None = getattr(dm, "mean", None)
        std: Sequence[float] | None = getattr(dm, "std", None)
        if mean is None or std is None:
            return images.clamp(0, 1)
        m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        s = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        return (images * s + m).clamp(0, 1)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if (
            batch_idx != 0
            or dataloader_idx != 0
            or trainer.sanity_checking
            or not trainer.is_global_zero
            or not epoch_due(trainer, self.every_n_epochs)
        ):
            return
        preview = getattr(pl_module, "mask_preview", None)
        if preview is None:
            self._warn_once(
                "preview",
                f"{type(pl_module).__name__} has no `mask_preview`; MaskImageLogger logs nothing.",
            )
            return
        writers = [lg.experiment for lg in trainer.loggers if hasattr(lg.experiment, "add_image")]
        if not writers:
            self._warn_once(
                "logger",
                "MaskImageLogger needs a logger with `add_image` "
                "(TensorBoardLogger); nothing is logged.",
            )
            return
        images = split_batch(batch)[0][: self.num_images]
        generator = getattr(pl_module, "mask_generator", None)
        rng_state = generator.get_state() if isinstance(generator, torch.Generator) else None
        try:
            with eval_mode(pl_module), torch.no_grad():
                out = preview(images)
        finally:
            if rng_state is not None:
                generator.set_state(rng_state)  # type: ignore[union-attr]
        grid = mask_panels(
            self._unnormalise(images.float(), trainer),
            out["context"],
            out["target"],
            out["similarity"].float(),
            self.min_size,
        )
        for writer in writers:
            writer.add_image(self.tag, grid, global_step=trainer.global_step)
