"""LeJEPA (Balestriero & LeCun, arXiv 2511.08544) as a peer of the race, from lightly's
``LeJEPALoss`` (SIGReg + invariance to the mean of the global views): one encoder, no EMA, no
stop-gradient, no predictor. Every choice scaled to 32 px, and where it comes from:

* views: the ResNet gets LeJEPA's DINO multi-crop, 2 global crops at 32 px (scale 0.4–1) and 6
  local at 16 px (scale 0.05–0.4); the ViT gets the authors' ViT example (``MINIMAL.md``): 4
  global crops, scale 0.08–1. NOTE: our ViT-Tiny/4 has fixed positions for an 8×8 grid, so it
  takes no 16 px local crops. No blur at 32 px (as every peer here).
* projector: the example's ``MLP(dim, [2048, 2048, 16])`` with BatchNorm (torchvision's MLP),
  on the average-pooled trunk; all views through it as one batch, as the example does.
* loss: λ = 0.05 (lightly's default, the reference implementation's), SIGReg with 17 knots on
  [0, 3] and 256 random directions per step (the example's count).
* optimiser: AdamW; ViT lr 2e-3 at batch 256, wd 0.05 (the example); ResNet lr 5e-4 at batch
  256, wd 5e-4 (the paper's ResNet setting); both scaled linearly to the batch (the example's
  ``lr_bs256``). Warm-up 1 epoch of the example's 800 (from 0.01×), then a cosine to half the
  peak (its ``eta_min`` of 1e-3 under a 2e-3 peak), both scaled to the run's length.
* evaluated: the one (online) trunk.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from lightly.loss.lejepa_loss import LeJEPALoss, lejepa_invariance_loss
from torch import Tensor, nn
from torchvision.ops import MLP

from benchmarks.curves.lightly_baselines import MultiViewMethod
from jepa_lightning.modules.vit import ViTEncoder

CJEPA_CONFIG = Path(__file__).resolve().parents[2] / "configs/cifar10_cjepa_vit_tiny.yaml"


class TokenGrid(nn.Module):
    """A ViT encoder as a feature map: ``(B, N, D)`` tokens -> ``(B, D, gh, gw)``, so every
    method's snapshot is evaluated by the same average pooling."""

    def __init__(self, encoder: ViTEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x).transpose(1, 2).unflatten(2, self.encoder.grid)


def vit_tiny(image_size: int = 32, depth: int | None = None) -> TokenGrid:
    """The ViT of ``configs/cifar10_cjepa_vit_tiny.yaml`` (arch, patch size, depth) as a grid."""
    cfg = yaml.safe_load(CJEPA_CONFIG.read_text())["model"]["init_args"]
    depth = depth if depth is not None else cfg.get("depth")
    return TokenGrid(ViTEncoder(cfg["arch"], image_size, cfg["patch_size"], depth))


class LeJEPA(MultiViewMethod):
    """LeJEPA on the small-stem ResNet-18: views ``[global_0, global_1, local_0, ...]``."""

    lam = 0.05
    base_lr, weight_decay = 5e-4, 5e-4  # at batch 256
    num_global = 2
    warmup_fraction = 1 / 800
    warmup_start = 0.01
    final_lr_ratio = 0.5

    def __init__(self, batch_size: int = 128) -> None:
        super().__init__(batch_size)
        self._build_head()

    def _build_head(self) -> None:
        dim = self.pooled(torch.zeros(2, 3, 32, 32)).shape[1]
        self.projector = MLP(dim, [2048, 2048, 16], norm_layer=nn.BatchNorm1d)
        self.criterion = LeJEPALoss(lambda_param=self.lam, sigreg_num_vectors=256)

    def loss(self, views: list[Tensor]) -> Tensor:
        n = views[0].shape[0]
        sizes = sorted({v.shape[-1] for v in views}, reverse=True)
        # One trunk pass per resolution; the projector's BatchNorm sees every view together.
        emb = torch.cat([self.pooled(torch.cat([v for v in views if v.shape[-1] == s]))
                         for s in sizes])  # fmt: skip  # (V·N, C), global views first
        proj = self.projector(emb).unflatten(0, (len(views), n))  # (V, N, 16)
        global_proj, local_proj = proj[: self.num_global], proj[self.num_global :]
        if len(local_proj):
            return self.criterion(local_proj=local_proj, global_proj=global_proj)
        # Global views only (LeJEPA's ViT example): lightly's loss wants local views, so its
        # two terms are combined here exactly as it combines them.
        inv = lejepa_invariance_loss(all_proj=proj, global_proj=global_proj)
        return self.lam * self.criterion.sigreg(proj) + (1 - self.lam) * inv

    def make_optimizer(self) -> torch.optim.Optimizer:
        lr = self.base_lr * self.batch_size / 256
        return torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=self.weight_decay)


class LeJEPAViT(LeJEPA):
    """LeJEPA on ViT-Tiny/4 (the C-JEPA config's encoder), 4 global views."""

    base_lr, weight_decay = 2e-3, 0.05
    num_global = 4

    def __init__(self, batch_size: int = 128, depth: int | None = None) -> None:
        MultiViewMethod.__init__(self, batch_size)
        self.backbone = vit_tiny(depth=depth)  # type: ignore[assignment]
        self._build_head()
