"""C-JEPA (Mo & Tong, arXiv 2410.19560, NeurIPS 2024) and I-JEPA (Assran et al., 2023) on ViTs.

Specification implemented (``docs/c_jepa.md`` has the long form and the reasons):

* **I-JEPA part** (C-JEPA keeps it unchanged): patch grid of a ViT without class token and with
  fixed 2-D sin-cos positions; multi-block masking (4 target blocks of scale 0.15–0.2, aspect
  0.75–1.5; one context block of scale 0.85–1.0 minus the targets); the context encoder sees
  the context tokens only, the EMA target encoder (momentum linear 0.996 -> 1.0 per step) all
  tokens; a narrow ViT predictor fills each target block from mask tokens + positions;
  ``L_JEPA`` = smooth-L1 between predictions and the layer-normalised target tokens, averaged
  over target patches (I-JEPA §3; smooth-L1 and the LayerNorm as in its reference code).
* **C-JEPA part**: ``L = L_JEPA + β_vicreg · (β_sim · L_inv + β_std · L_var + β_cov · L_cov)``
  with ``β_vicreg = 0.001`` and ``β_sim, β_std, β_cov = 25, 25, 1`` (the paper's Eq. 21–22),
  the VICReg terms of :class:`~jepa_lightning.losses.VICRegTerms` (variance/covariance over
  the global batch under DDP): the default of the ``regularizer`` slot (``regularizer_weight``
  is β_vicreg), which also takes :class:`~jepa_lightning.losses.SIGRegTerms` or
  :class:`~jepa_lightning.losses.VISRegTerms` on the same embeddings.
* **Where the VICReg terms apply** (``vicreg_mode``, for any regulariser; the paper is
  ambiguous):
  ``views`` (default) — on the patch-mean context-encoder embeddings ``(B, D)`` of two
  augmented views of each image, each view also giving its own I-JEPA loss (the abstract's
  "invariance in the mean of augmented views" and the stated defect of I-JEPA: "learning the
  mean of patch representations"); ``encoders`` — patch-mean context- vs target-encoder
  embeddings of one view; ``blocks`` — the predictor's outputs mean-pooled per target block,
  VICReg across the blocks of one view.

With ``regularizer_weight = 0`` (or :class:`IJEPA`) no regulariser is computed and only the
first view is used: the module *is* I-JEPA.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from jsonargparse import lazy_instance
from torch import Tensor

from jepa_lightning.losses.ijepa import ijepa_loss, layer_norm_targets
from jepa_lightning.losses.regularizer import Regularizer
from jepa_lightning.losses.vicreg import VICRegTerms
from jepa_lightning.masking.ijepa import IJEPAMultiBlockMasking, PatchMasks
from jepa_lightning.methods.base import JEPAModule
from jepa_lightning.methods.regularization import UNSET, Unset, resolve_aliases
from jepa_lightning.modules.vit import ViTArch, ViTEncoder, gather_tokens
from jepa_lightning.modules.vit_predictor import ViTPredictor
from jepa_lightning.schedules import ScheduleKind

#: The default VICReg terms, the paper's 25 / 25 / 1 (lazy: the CLI shows them as a class).
_PAPER_VICREG = lazy_instance(VICRegTerms)
#: The VICReg options of CJEPA before they became one ``regularizer: VICRegTerms`` (deprecated).
_LEGACY_KEYS = ("sim_weight", "std_weight", "cov_weight", "gather_distributed")

VICRegMode = Literal["views", "encoders", "blocks"]


def _legacy_vicreg(regularizer: Regularizer | None, kwargs: dict[str, Any]) -> Regularizer | None:
    """Apply (and remove from ``kwargs``) the deprecated ``sim_weight``, ``std_weight``,
    ``cov_weight`` and ``gather_distributed`` options, e.g. of an old checkpoint."""
    legacy = {key: kwargs.pop(key) for key in _LEGACY_KEYS if key in kwargs}
    if not legacy:
        return regularizer
    warnings.warn(
        f"CJEPA's {', '.join(legacy)} are deprecated and will be removed in the next version: "
        "use regularizer=VICRegTerms(...) (YAML: regularizer: {class_path: "
        "jepa_lightning.losses.VICRegTerms, init_args: {...}}), as CNNJEPA.",
        DeprecationWarning,
        stacklevel=3,
    )
    if regularizer is not None and not isinstance(regularizer, VICRegTerms):
        raise TypeError(f"{', '.join(legacy)} are VICRegTerms options, the regulariser is not")
    base = regularizer if regularizer is not None else VICRegTerms()
    options = {key: getattr(base, key) for key in (*_LEGACY_KEYS, "eps")}
    return VICRegTerms(**{**options, **legacy})


class JEPAForward(NamedTuple):
    """A batch (views concatenated) through context encoder, predictor and target encoder."""

    prediction: Tensor  # (B, n_blocks, Nt, D) predictor outputs
    target: Tensor  # (B, n_blocks, Nt, D) layer-normalised target tokens, float32, no grad
    context: Tensor  # (B, Nc, D) context-encoder outputs
    target_tokens: Tensor  # (B, N, D) target-encoder outputs (before the target LayerNorm)


class CJEPA(JEPAModule):
    """C-JEPA: I-JEPA plus VICReg variance/invariance/covariance terms (see the module docs).

    Args:
        arch: ViT size: ``vit_tiny`` (192 wide), ``vit_small`` (384), ``vit_base`` (768), ...
        patch_size: Patch side in pixels: 16 (or 14) for 224 px, 4–8 for 32–64 px images.
        image_size: Training image side in pixels, a multiple of ``patch_size``. Linked from
            the DataModule by the CLI.
        depth: Encoder depth; ``None`` = the architecture's (12 for tiny/small/base).
        predictor_embed_dim: Predictor width (I-JEPA: 384).
        predictor_depth: Predictor depth (I-JEPA reference: 12).
        predictor_num_heads: Predictor attention heads; ``None`` = the encoder's (reference).
        masking: Multi-block mask generator on the patch grid; ``None`` = the paper's settings.
        regularizer: The regulariser: by default C-JEPA's VICReg terms with their weights
            β_sim, β_std, β_cov (paper: 25 / 25 / 1) and ``gather_distributed`` (variance and
            covariance over the batch of all processes under DDP); or
            :class:`~jepa_lightning.losses.SIGRegTerms` /
            :class:`~jepa_lightning.losses.VISRegTerms`. The same option, and YAML shape, as
            :class:`~jepa_lightning.CNNJEPA`'s. ``None`` = no regulariser (I-JEPA).
        regularizer_weight: Its weight (C-JEPA's β_vicreg: 0.001); 0 = I-JEPA.
        regularizer_projector: Widths of a small MLP between the embeddings and the regulariser
            (BatchNorm1d + ReLU between layers, as LeJEPA's); ``None`` (default) = none.
        vicreg: Deprecated spelling of ``regularizer`` (``unset``: not given); when given it
            replaces ``regularizer``, with a warning.
        vicreg_weight: Deprecated spelling of ``regularizer_weight`` (``None``: not given).
        vicreg_mode: Where the regulariser applies: ``views`` (two augmented views, needs
            ``data.init_args.num_views: 2``), ``encoders`` or ``blocks`` (one view).
        ema_schedule: Shape of the EMA momentum ramp (I-JEPA: linear 0.996 -> 1.0).
        final_weight_decay: Weight decay at the end of a cosine ramp from the optimiser's
            (I-JEPA/C-JEPA: 0.04 -> 0.4); ``None`` keeps it constant.
        **kwargs: Optimisation, EMA and logging options of :class:`JEPAModule`.

    Example:
        >>> import torch
        >>> from jepa_lightning import CJEPA
        >>> from jepa_lightning.losses import VICRegTerms
        >>> model = CJEPA(arch="vit_tiny", patch_size=4, image_size=32, depth=1,
        ...               predictor_embed_dim=48, predictor_depth=1,
        ...               regularizer=VICRegTerms(sim_weight=25.0, std_weight=25.0, cov_weight=1.0))
        >>> views = torch.randn(4, 2, 3, 32, 32)  # (B, V, 3, H, W): two views per image
        >>> out = model.shared_step(views)
        >>> out["loss"].backward()
        >>> sorted(k for k in out if k.startswith("vic"))
        ['vic_covariance', 'vic_invariance', 'vic_variance', 'vicreg_loss']
        >>> model.embed(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 192])

        VISReg (or SIGReg) in the same slot, on the same two views' patch means:

        >>> from jepa_lightning.losses import VISRegTerms
        >>> model = CJEPA(arch="vit_tiny", patch_size=4, image_size=32, depth=1,
        ...               predictor_embed_dim=48, predictor_depth=1,
        ...               regularizer=VISRegTerms(num_slices=64), regularizer_weight=1.0)
        >>> out = model.shared_step(views)
        >>> sorted(k for k in out if k.startswith("vis"))
        ['vis_center', 'vis_invariance', 'vis_scale', 'vis_shape', 'visreg_loss']
    """

    def __init__(
        self,
        arch: ViTArch = "vit_base",
        patch_size: int = 16,
        image_size: int = 224,
        depth: int | None = None,
        predictor_embed_dim: int = 384,
        predictor_depth: int = 12,
        predictor_num_heads: int | None = None,
        masking: IJEPAMultiBlockMasking | None = None,
        regularizer: Regularizer | None = _PAPER_VICREG,
        regularizer_weight: float = 0.001,
        regularizer_projector: list[int] | None = None,
        vicreg: VICRegTerms | Unset | None = UNSET,
        vicreg_weight: float | None = None,
        vicreg_mode: VICRegMode = "views",
        ema_schedule: ScheduleKind = "linear",
        final_weight_decay: float | None = 0.4,
        **kwargs: Any,
    ) -> None:
        regularizer, regularizer_weight = resolve_aliases(
            "CJEPA", regularizer, regularizer_weight, vicreg, vicreg_weight
        )
        regularizer = _legacy_vicreg(regularizer, kwargs)
        super().__init__(ema_schedule=ema_schedule, final_weight_decay=final_weight_decay, **kwargs)
        self.save_hyperparameters(ignore=["masking", "optimizer", "regularizer", "vicreg"])
        if vicreg_mode not in ("views", "encoders", "blocks"):
            raise ValueError(f"vicreg_mode must be views, encoders or blocks, not {vicreg_mode!r}")
        self.context_encoder = ViTEncoder(arch, image_size, patch_size, depth)
        self.grid = self.context_encoder.grid
        self.masking = masking if masking is not None else IJEPAMultiBlockMasking()
        self.masking.validate_grid(*self.grid)
        self.target_encoder = copy.deepcopy(self.context_encoder).requires_grad_(False)
        self.predictor = ViTPredictor(
            self.embed_dim,
            self.grid,
            embed_dim=predictor_embed_dim,
            depth=predictor_depth,
            num_heads=predictor_num_heads or self.context_encoder.num_heads,
        )
        self.set_regularizer(regularizer, regularizer_weight, regularizer_projector)
        self.vicreg_mode = vicreg_mode

    @property
    def embed_dim(self) -> int:
        return self.context_encoder.embed_dim

    @property
    def num_views(self) -> int:
        """Augmented views per image the loss uses: 2 for ``vicreg_mode="views"``."""
        return 2 if self.uses_regularizer and self.vicreg_mode == "views" else 1

    def views_hint(self) -> str:
        return " (vicreg_mode='views'), or choose vicreg_mode 'encoders' or 'blocks'"

    def sample_masks(self, batch_size: int) -> PatchMasks:
        """Masks for one batch from the module's seeded generator, on the module's device."""
        return self.masking(batch_size, *self.grid, generator=self.mask_generator).to(self.device)

    def forward_masked(self, images: Tensor, masks: PatchMasks) -> JEPAForward:
        """Run one view ``(B, 3, H, W)`` through the three networks."""
        with torch.no_grad():
            tokens = self.target_encoder(images)  # (B, N, D), all patches
            b, n, nt = masks.targets.shape
            target = gather_tokens(layer_norm_targets(tokens), masks.targets.view(b, n * nt))
        context = self.context_encoder(images, masks.context)  # (B, Nc, D)
        prediction = self.predictor(context, masks.context, masks.targets)  # (B, n, Nt, D)
        return JEPAForward(prediction, target.view(b, n, nt, -1), context, tokens)

    def loss(self, fwd: JEPAForward, masks: PatchMasks) -> dict[str, Tensor]:
        """I-JEPA's loss (the mean of the views' losses) and the context length."""
        jepa = ijepa_loss(fwd.prediction, fwd.target)
        context_tokens = jepa.new_tensor(float(fwd.context.shape[1]))
        return {"loss": jepa, "jepa_loss": jepa, "context_tokens": context_tokens}

    def pooled_target(self, fwd: JEPAForward) -> Tensor:
        return fwd.target_tokens.mean(dim=1)  # (V·B, D)

    def regularizer_embeddings(
        self, fwd: JEPAForward, masks: PatchMasks, num_views: int
    ) -> list[Tensor]:
        """The ``(B, D)`` branches the regulariser sees, per ``vicreg_mode``. ``fwd`` holds the
        ``num_views`` views concatenated along the batch."""
        if self.vicreg_mode == "views":
            # NOTE: the patch mean is taken over each view's context tokens — the pass the
            # I-JEPA loss already needs — not over an extra unmasked pass of the context encoder.
            return list(fwd.context.mean(dim=1).chunk(num_views))  # V × (B, D)
        if self.vicreg_mode == "encoders":
            return [fwd.context.mean(dim=1), fwd.target_tokens.mean(dim=1)]
        return list(fwd.prediction.mean(dim=2).unbind(dim=1))  # n_blocks × (B, D)

    def features(self, images: Tensor) -> Tensor:
        return self.feature_encoder(images).mean(dim=1).float()  # (B, D)

    def target_map(self, images: Tensor) -> Tensor:
        tokens = self.target_encoder(images)  # (B, N, D), N = gh · gw patches
        return tokens.transpose(1, 2).unflatten(2, self.grid)  # (B, D, gh, gw)

    @torch.no_grad()
    def mask_preview(self, images: Tensor) -> dict[str, Tensor]:
        """Masks and per-patch cosine similarity of prediction and target (0 off-target)."""
        masks = self.sample_masks(images.shape[0])
        fwd = self.forward_masked(images, masks)
        sim = F.cosine_similarity(fwd.prediction.float(), fwd.target, dim=-1)  # (B, n, Nt)
        b = images.shape[0]
        grid = torch.zeros(b, self.grid[0] * self.grid[1], device=sim.device)
        grid.scatter_(1, masks.targets.flatten(1), sim.flatten(1))  # overlaps: one block wins
        return {
            "context": masks.context_grid(),
            "target": masks.target_grid(),
            "similarity": grid.view(b, *self.grid),
        }


class IJEPA(CJEPA):
    """I-JEPA: :class:`CJEPA` with the regulariser off (one view, no extra cost).

    Args:
        regularizer_weight: 0 (I-JEPA). Any other value turns this into a C-JEPA.
        **kwargs: Options of :class:`CJEPA`.

    Example:
        >>> import torch
        >>> from jepa_lightning import IJEPA
        >>> model = IJEPA(arch="vit_tiny", patch_size=4, image_size=32, depth=1,
        ...               predictor_embed_dim=48, predictor_depth=1)
        >>> model.num_views, model.uses_regularizer
        (1, False)
        >>> out = model.shared_step(torch.randn(4, 3, 32, 32))
        >>> out["loss"] is out["jepa_loss"]
        True
    """

    def __init__(self, regularizer_weight: float = 0.0, **kwargs: Any) -> None:
        super().__init__(regularizer_weight=regularizer_weight, **kwargs)
