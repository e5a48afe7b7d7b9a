"""CNN-JEPA (Kalapos & Gyires-Tóth, arXiv 2408.07514) as a LightningModule."""

from __future__ import annotations

import copy
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from jepa_lightning.losses.jepa import (
    TargetNorm,
    check_target_norm,
    normalize_targets,
    normalized_smooth_l1,
)
from jepa_lightning.losses.regularizer import Regularizer
from jepa_lightning.losses.vicreg import VICRegTerms
from jepa_lightning.masking.grid import GridMasks, MaskGenerator, MixedMasking
from jepa_lightning.methods.base import JEPAModule
from jepa_lightning.methods.regularization import UNSET, Unset, resolve_aliases
from jepa_lightning.modules.conv_predictor import ConvPredictor
from jepa_lightning.modules.masked_resnet import (
    MaskedResNet,
    SparseBackend,
    masked_average_pool,
)


class MaskedForward(NamedTuple):
    """A batch through CNN-JEPA's three networks, each a ``(B, C, h, w)`` feature map."""

    prediction: Tensor  # predictor output at every cell
    target: Tensor  # target encoder on the full image (no grad)
    context: Tensor  # context encoder on the visible cells, 0 at masked cells


class CNNJEPA(JEPAModule):
    """CNN-JEPA: a masked ("sparse") ResNet context encoder sees the visible cells of the image;
    a depthwise-separable conv predictor fills the masked cells from a learned mask token; the
    loss regresses the EMA target encoder's full-image features at the target cells
    (L2-normalised, smooth-L1). One view, no projector.

    Args:
        backbone: torchvision ResNet name (resnet18/34/50/101/152, wide_resnet50_2, ...).
        small_images: Use the 3×3/1 stem without max-pool (total stride 8) for 32–64 px images.
        image_size: Training image side in pixels; must be a multiple of the backbone stride
            (32, or 8 with ``small_images``). Linked from the DataModule by the CLI.
        predictor_depth: Number of predictor layers (paper: 3).
        predictor_kernel_size: Depthwise kernel size of the predictor (paper: 3).
        predictor_channels: Hidden width of the predictor; ``None`` = encoder width (paper).
        predictor_linear_output: End the predictor with a plain 1×1 conv (no BN, no ReLU), so it
            can predict negative values; use it with a ``target_norm`` other than ``none``. The
            paper's predictor ends with BN + ReLU.
        masking: Mask generator on the feature grid; ``None`` = the paper's mixed masking
            (multi-block with p = 0.75: 4 blocks of 15–20 %, aspect 0.75–1.5; else random 60 %).
        channels_last: Keep weights and images in channels-last memory format (faster convs
            on GPUs with tensor cores, and with bf16).
        compile: ``torch.compile`` the encoders and the predictor in place (state-dict keys
            unchanged); fuses the masked BatchNorm's elementwise work.
        regularizer: Anti-collapse regulariser: C-JEPA's VICReg terms
            (:class:`~jepa_lightning.losses.VICRegTerms`, as :class:`~jepa_lightning.CJEPA`),
            LeJEPA's :class:`~jepa_lightning.losses.SIGRegTerms` or
            :class:`~jepa_lightning.losses.VISRegTerms`; ``None`` (default) = the paper's
            CNN-JEPA, which has none. The loss becomes ``L_JEPA + regularizer_weight · R(z)``
            (with VICReg: C-JEPA's Eq. 21–22), ``z`` the context encoder's output average-pooled
            over each image's **visible** cells, ``(B, C)`` per view. That is the CNN
            counterpart of our C-JEPA reading (``vicreg_mode="views"``: the patch mean of the
            context encoder's tokens): it regularises the online encoder that learns, whose
            pooled output is what collapses, and it reuses the pass the JEPA loss already makes.
            An invariance term (``sim_weight != 0``) compares two augmented views of each image:
            set ``data.init_args.num_views: 2``; both views then get their own masks and JEPA
            loss (one batch of ``2B``, as C-JEPA). With ``sim_weight: 0`` the regulariser runs
            on one view at no extra encoder cost. Its batch statistics see the global batch
            under DDP (``gather_distributed``).
        regularizer_weight: Weight of the regulariser (C-JEPA's β_vicreg: 0.001; LeJEPA's λ:
            0.02–0.05).
        regularizer_projector: Widths of a small MLP between the embedding and the regulariser
            (torchvision's ``MLP``, BatchNorm1d + ReLU between layers; LeJEPA's minimal example:
            ``[2048, 2048, 128]``); ``None`` (default) = none, the regulariser sees ``z``.
        vicreg: Deprecated spelling of ``regularizer`` (``unset``: not given); when given it
            replaces ``regularizer``, with a warning.
        vicreg_weight: Deprecated spelling of ``regularizer_weight`` (``None``: not given).
        sparse_backend: How the context encoder's masked forward runs: ``masked_dense``
            (default) or ``minkowski`` (MinkowskiEngine sparse convolution, an optional extra).
            Same parameters and checkpoints, same function; the target encoder is dense.
        target_norm: Standardisation of the target map before the per-cell L2 normalisation
            (:func:`~jepa_lightning.losses.normalize_targets`): ``none`` (the paper), ``layer``
            (per cell over channels, as I-JEPA), ``batch`` (per channel over the batch and
            cells) or ``batch_position`` (per channel and cell over the batch). The ``batch*``
            options remove the part of the target that does not depend on the image, which a
            predictor can otherwise learn from the mask token and position alone.
        zero_init_residual: Zero-initialise the last BatchNorm of every residual block (as the
            reference code's timm ResNet); torchvision's default is ``False``.
        last_stride: Stride of the backbone's last stage (torchvision and the paper: 2). ``1``
            halves the total stride, e.g. an 8×8 mask grid at 32 px with ``small_images``
            instead of 4×4, at about 1.8× the FLOPs of a ResNet-18.
        context_view: What the context encoder sees: ``same`` (the paper) the target's image;
            ``other`` a recoloured copy of it (the second view of
            ``data.init_args.num_views: 2, shared_crop: true, color_jitter: ...``: same crop,
            own colour jitter / grayscale), so the predictor must infer the target's
            clean-image features at the masked cells from visible cells in other colours.
            NOTE: not in the paper, whose augmentation is crop and flip only; measured on
            CIFAR-10 in benchmarks/RESULTS.md. Not combinable with a regulariser's invariance
            term.
        **kwargs: Optimisation, EMA and logging options of :class:`JEPAModule`.

    Example:
        >>> import torch
        >>> from jepa_lightning import CNNJEPA
        >>> model = CNNJEPA(backbone="resnet18", small_images=True, image_size=32)
        >>> out = model.shared_step(torch.randn(4, 3, 32, 32))  # one training step's loss
        >>> out["loss"].backward()
        >>> sorted(out)
        ['context_ratio', 'embedding', 'loss', 'target_ratio']
        >>> model.embed(torch.randn(2, 3, 32, 32)).shape  # EMA target encoder, pooled
        torch.Size([2, 512])

        With LeJEPA's SIGReg on a small projector of the pooled context (VICRegTerms and
        VISRegTerms plug into the same slot):

        >>> from jepa_lightning.losses import SIGRegTerms
        >>> model = CNNJEPA(backbone="resnet18", small_images=True, image_size=32,
        ...                 regularizer=SIGRegTerms(num_vectors=64), regularizer_weight=0.05,
        ...                 regularizer_projector=[64, 16])
        >>> out = model.shared_step(torch.randn(4, 3, 32, 32))
        >>> out["loss"].backward()
        >>> sorted(k for k in out if k.startswith("sigreg"))
        ['sigreg_invariance', 'sigreg_loss', 'sigreg_statistic']
        >>> model.regularizer_projector(torch.randn(4, 512)).shape  # SIGReg sees (B, 16)
        torch.Size([4, 16])
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        small_images: bool = False,
        image_size: int = 224,
        predictor_depth: int = 3,
        predictor_kernel_size: int = 3,
        predictor_channels: int | None = None,
        predictor_linear_output: bool = False,
        masking: MaskGenerator | None = None,
        channels_last: bool = False,
        compile: bool = False,
        regularizer: Regularizer | None = None,
        regularizer_weight: float = 0.001,
        regularizer_projector: list[int] | None = None,
        vicreg: VICRegTerms | Unset | None = UNSET,
        vicreg_weight: float | None = None,
        sparse_backend: SparseBackend = "masked_dense",
        target_norm: TargetNorm = "none",
        zero_init_residual: bool = False,
        last_stride: int = 2,
        context_view: Literal["same", "other"] = "same",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        regularizer, regularizer_weight = resolve_aliases(
            "CNNJEPA", regularizer, regularizer_weight, vicreg, vicreg_weight
        )
        if context_view not in ("same", "other"):
            raise ValueError(f"context_view must be 'same' or 'other', got {context_view!r}")
        if context_view == "other" and regularizer is not None and regularizer.compares_views:
            raise ValueError(
                "context_view='other' and the regulariser's invariance term (sim_weight != 0) "
                "both use the second view; set regularizer.init_args.sim_weight: 0 or "
                "context_view: same."
            )
        self.context_view = context_view
        self.save_hyperparameters(ignore=["masking", "optimizer", "regularizer", "vicreg"])
        self.context_encoder = MaskedResNet(
            backbone,
            small_images=small_images,
            zero_init_residual=zero_init_residual,
            backend=sparse_backend,
            last_stride=last_stride,
        )
        stride = self.context_encoder.stride
        if image_size % stride or image_size // stride < 2:
            raise ValueError(
                f"image_size={image_size} does not fit backbone {backbone!r} with total stride "
                f"{stride}: it must be a multiple of {stride} giving a mask grid of at least 2x2 "
                f"(smallest: {2 * stride} px). Use larger images"
                + (" or small_images=True (stride 8)." if not small_images else ".")
            )
        self.grid = self.context_encoder.grid_size(image_size)
        self.masking = masking if masking is not None else MixedMasking()
        self.masking.validate_grid(self.grid, self.grid)
        self.target_encoder = copy.deepcopy(self.context_encoder).requires_grad_(False)
        self.predictor = ConvPredictor(
            self.context_encoder.num_features,
            depth=predictor_depth,
            kernel_size=predictor_kernel_size,
            hidden_channels=predictor_channels,
            linear_output=predictor_linear_output,
        )
        self.set_regularizer(regularizer, regularizer_weight, regularizer_projector)
        check_target_norm(target_norm)
        self.target_norm = target_norm
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if compile:
            for module in (self.context_encoder, self.target_encoder, self.predictor):
                module.compile()

    @property
    def embed_dim(self) -> int:
        return self.context_encoder.num_features

    @property
    def num_views(self) -> int:
        """Augmented views per image the loss uses: 2 for ``context_view="other"`` and for a
        regulariser's invariance term, else 1."""
        if self.context_view == "other":
            return 2
        return 2 if self.uses_regularizer and self.regularizer.compares_views else 1  # type: ignore[union-attr]

    def views_hint(self) -> str:
        if self.context_view == "other":
            return (
                " and shared_crop: true (context_view: other puts the second view, a recoloured "
                "copy of the first, through the context encoder), or context_view: same"
            )
        return (
            " (the regulariser's invariance term, regularizer.init_args.sim_weight != 0, "
            "compares two augmented views of each image), or sim_weight: 0 for one view"
        )

    def sample_masks(self, batch_size: int) -> GridMasks:
        """Masks for one batch, drawn from the module's seeded generator, on its device."""
        masks = self.masking(batch_size, self.grid, self.grid, generator=self.mask_generator)
        return masks.to(self.device)

    def join_views(self, views: list[Tensor]) -> Tensor:
        if self.context_view == "other" and len(views) > 1:  # (evaluation loaders: one view)
            return torch.stack(views[:2], dim=1)  # (B, 2, 3, H, W): target view, context view
        return super().join_views(views)

    def forward_masked(self, images: Tensor, masks: GridMasks) -> MaskedForward:
        """Prediction, target and context feature maps, each ``(B, C, h, w)``, of images
        ``(B, 3, H, W)`` or of (target, context) view pairs ``(B, 2, 3, H, W)``."""
        if images.ndim == 5:  # context_view="other": the two views of each image
            target_images, images = images[:, 0], images[:, 1]
        else:
            target_images = images
        if self.channels_last:
            target_images = target_images.contiguous(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        size = self.grid * self.context_encoder.stride
        if images.ndim != 4 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(
                f"Got a batch of shape {tuple(images.shape)}, but the model was built for "
                f"(B, 3, {size}, {size}) images (image_size={size}, a {self.grid}x{self.grid} mask "
                "grid). The DataModule's image_size and the model's must agree (the CLI links "
                "data.init_args.image_size into the model); check that the transforms crop to it."
            )
        with torch.no_grad():
            target = self.target_encoder(target_images)  # (B, C, h, w), full image, dense BN
        context = self.context_encoder(images, masks.context)  # (B, C, h, w), 0 where masked
        prediction = self.predictor(context, masks.context)  # (B, C, h, w)
        return MaskedForward(prediction, target, context)

    def loss(self, fwd: MaskedForward, masks: GridMasks) -> dict[str, Tensor]:
        """CNN-JEPA's loss at the target cells, and the mask ratios."""
        target = normalize_targets(fwd.target.detach(), self.target_norm)  # (V·B, C, h, w)
        return {
            "loss": normalized_smooth_l1(fwd.prediction, target, masks.target),
            "target_ratio": masks.target.float().mean(),
            "context_ratio": masks.context.float().mean(),
        }

    def pooled_target(self, fwd: MaskedForward) -> Tensor:
        return masked_average_pool(fwd.target)  # (V·B, C)

    def regularizer_embeddings(
        self, fwd: MaskedForward, masks: GridMasks, num_views: int
    ) -> list[Tensor]:
        """The context encoder's output averaged over each image's visible cells, per view."""
        pooled = masked_average_pool(fwd.context, masks.context)  # (V·B, C)
        if self.context_view == "other":  # one context view per image
            return [pooled]
        return list(pooled.chunk(num_views))  # V × (B, C)

    def target_map(self, images: Tensor) -> Tensor:
        return self.target_encoder(images)  # (B, C, h, w)

    def features(self, images: Tensor) -> Tensor:
        return masked_average_pool(self.feature_encoder(images)).float()  # (B, C)

    @torch.no_grad()
    def mask_preview(self, images: Tensor) -> dict[str, Tensor]:
        """Masks and per-cell cosine similarity of prediction and target, for pictures."""
        masks = self.sample_masks(images.shape[0])
        prediction, target, _ = self.forward_masked(images, masks)  # (B, C, h, w) each
        similarity = F.cosine_similarity(prediction.float(), target.float(), dim=1)  # (B, h, w)
        return {"context": masks.context, "target": masks.target, "similarity": similarity}
