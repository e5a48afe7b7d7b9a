"""The one regulariser slot of the JEPA methods: an anti-collapse term on the embedding each
method regularises (:class:`~jepa_lightning.losses.VICRegTerms`,
:class:`~jepa_lightning.losses.SIGRegTerms` or :class:`~jepa_lightning.losses.VISRegTerms`),
its weight, an optional projector in front of it, and the deprecated ``vicreg`` spelling.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchvision.ops import MLP

from jepa_lightning.losses.regularizer import Regularizer

#: Default of the deprecated ``vicreg`` option: not given (``None`` turns the regulariser off).
Unset = Literal["unset"]
UNSET: Unset = "unset"


def resolve_aliases(
    owner: str,
    regularizer: Regularizer | None,
    regularizer_weight: float,
    vicreg: Regularizer | Unset | None,
    vicreg_weight: float | None,
) -> tuple[Regularizer | None, float]:
    """``(regularizer, regularizer_weight)`` after the deprecated ``vicreg`` / ``vicreg_weight``
    options, which win when given (so ``--model.init_args.vicreg null`` still turns a config's
    regulariser off), with a ``FutureWarning`` that shows the new spelling."""
    if vicreg != UNSET:
        warnings.warn(
            f"{owner}: the option `vicreg` is deprecated and will be removed; it is now "
            "`regularizer` (VICRegTerms, SIGRegTerms or VISRegTerms). YAML: `regularizer: "
            "{class_path: jepa_lightning.losses.VICRegTerms, init_args: {...}}` or `regularizer: "
            "null`; command line: `--model.init_args.regularizer jepa_lightning.losses."
            "VICRegTerms` or `--model.init_args.regularizer null`; Python: "
            "`regularizer=VICRegTerms(...)`.",
            FutureWarning,
            stacklevel=3,
        )
        regularizer = vicreg  # type: ignore[assignment]
    if vicreg_weight is not None:
        warnings.warn(
            f"{owner}: the option `vicreg_weight` is deprecated and will be removed; it is now "
            f"`regularizer_weight` (YAML: `regularizer_weight: {vicreg_weight}`; command line: "
            f"`--model.init_args.regularizer_weight {vicreg_weight}`).",
            FutureWarning,
            stacklevel=3,
        )
        regularizer_weight = vicreg_weight
    return regularizer, regularizer_weight


def build_projector(in_dim: int, widths: list[int]) -> nn.Module:
    """LeJEPA's projector: torchvision's ``MLP`` with BatchNorm1d and ReLU after every layer
    but the last (LeJEPA's minimal example: widths ``[2048, 2048, 128]``)."""
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"regularizer_projector needs positive layer widths, got {widths}")
    return MLP(in_dim, list(widths), norm_layer=nn.BatchNorm1d)


class RegularizerSlot:
    """Mixin of :class:`~jepa_lightning.methods.base.JEPAModule`: the regulariser, its weight
    and projector, and the step that adds ``regularizer_weight · regularizer(...).loss``."""

    regularizer: Regularizer | None
    regularizer_weight: float
    regularizer_projector: nn.Module | None
    embed_dim: int
    global_step: int

    def set_regularizer(
        self, regularizer: Regularizer | None, weight: float, projector: list[int] | None
    ) -> None:
        """Install the regulariser (a copy: a config default is one shared instance), its
        weight, and a projector from ``embed_dim`` through ``projector`` widths if given."""
        self.regularizer = copy.deepcopy(regularizer)
        self.regularizer_weight = weight
        self.regularizer_projector = (
            build_projector(self.embed_dim, projector) if projector is not None else None
        )

    @property
    def uses_regularizer(self) -> bool:
        """The regulariser is on (set, with a non-zero weight and a non-zero term)."""
        reg = self.regularizer
        return reg is not None and self.regularizer_weight != 0 and not reg.is_zero

    def regularizer_embeddings(self, fwd: Any, masks: Any, num_views: int) -> list[Tensor]:
        """The ``(B, D)`` branches the regulariser sees; ``fwd`` holds ``num_views`` views."""
        raise NotImplementedError

    def add_regularizer(self, out: dict[str, Tensor], fwd: Any, masks: Any, views: int) -> None:
        """Add the weighted regulariser to ``out["loss"]`` (the method's own loss is kept as
        ``jepa_loss``) and its scalars to ``out``."""
        branches = self.regularizer_embeddings(fwd, masks, views)  # n × (B, D)
        if self.regularizer_projector is not None:  # one pass: BatchNorm over all branches
            projected = self.regularizer_projector(torch.cat(branches))  # (n·B, D')
            branches = list(projected.chunk(len(branches)))
        reg = self.regularizer(*branches, step=self.global_step)  # type: ignore[misc]
        out.update(jepa_loss=out["loss"], **reg.scalars())
        out["loss"] = out["loss"] + self.regularizer_weight * reg.loss

    def check_regularizer(self, stage: str) -> None:
        """Refuse to train a projector no loss uses (DDP would fail on its unused parameters;
        it is still built without a regulariser so that any checkpoint loads for evaluation)."""
        if stage == "fit" and self.regularizer_projector is not None and not self.uses_regularizer:
            raise ValueError(
                "regularizer_projector is set but the regulariser is off (regularizer null, "
                "regularizer_weight 0 or all its weights 0): nothing would train the projector. "
                "Set regularizer_projector: null, or turn the regulariser on."
            )

    # Deprecated read-only aliases of the attributes before the slot took any regulariser.
    @property
    def vicreg(self) -> Regularizer | None:
        """Deprecated alias of :attr:`regularizer`."""
        return self.regularizer

    @property
    def vicreg_weight(self) -> float:
        """Deprecated alias of :attr:`regularizer_weight`."""
        return self.regularizer_weight

    @property
    def uses_vicreg(self) -> bool:
        """Deprecated alias of :attr:`uses_regularizer`."""
        return self.uses_regularizer
