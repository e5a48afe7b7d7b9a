"""Vision Transformer encoder for I-JEPA / C-JEPA: patch tokens only, fixed 2-D sin-cos positions.

Built from torchvision's ``EncoderBlock`` (pre-norm attention + MLP), with our own patch
embedding, positional embedding and token selection instead of lightly's ``IJEPABackbone``,
which prepends a class token (an off-by-one against patch indices counted from 0) and learns
its positional embedding (I-JEPA's is fixed).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models.vision_transformer import EncoderBlock

ViTArch = Literal["vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge"]

#: ``arch -> (width, depth, heads)``, the standard DeiT/ViT sizes (MLP ratio 4).
VIT_ARCHS: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
    "vit_huge": (1280, 32, 16),
}


def sincos_pos_embed_2d(dim: int, height: int, width: int) -> Tensor:
    """Fixed 2-D sin-cos positional embedding ``(H · W, dim)`` in raster order, the MAE/I-JEPA
    ``get_2d_sincos_pos_embed`` (first half encodes the column, second half the row)."""
    if dim % 4:
        raise ValueError(f"sin-cos positional embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # (D/4,)
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )

    def embed_1d(pos: Tensor) -> Tensor:
        out = pos.reshape(-1, 1) * omega  # (N, D/4)
        return torch.cat([out.sin(), out.cos()], dim=1)  # (N, D/2)

    return torch.cat([embed_1d(cols), embed_1d(rows)], dim=1).float()  # (N, D)


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """``tokens (B, N, D)``, ``index (B, K)`` -> ``(B, K, D)``."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def transformer_blocks(width: int, depth: int, heads: int, mlp_ratio: float) -> nn.Sequential:
    """``depth`` torchvision ViT blocks (LayerNorm eps 1e-6, no dropout) with I-JEPA's init:
    truncated normal (std 0.02) weights, zero biases, and each residual branch's output
    projection scaled by ``1/√(2·layer)``."""
    if width % heads:
        raise ValueError(f"width {width} is not divisible by {heads} attention heads")
    layers = OrderedDict()
    for i in range(depth):
        block = EncoderBlock(
            heads, width, int(width * mlp_ratio), 0.0, 0.0, partial(nn.LayerNorm, eps=1e-6)
        )
        attn = block.self_attention
        nn.init.trunc_normal_(attn.in_proj_weight, std=0.02)
        nn.init.zeros_(attn.in_proj_bias)
        for linear in (attn.out_proj, block.mlp[0], block.mlp[3]):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        with torch.no_grad():
            attn.out_proj.weight.div_(math.sqrt(2.0 * (i + 1)))
            block.mlp[3].weight.div_(math.sqrt(2.0 * (i + 1)))
        layers[f"encoder_layer_{i}"] = block
    return nn.Sequential(layers)


class ViTEncoder(nn.Module):
    """ViT over patch tokens (no class token) with fixed sin-cos positions and a final LayerNorm.

    ``forward(images)`` encodes every patch (target encoder); ``forward(images, keep)`` encodes
    only the patches indexed by ``keep`` (context encoder: the others never enter attention).

    Args:
        arch: ``vit_tiny`` (192 wide, 3 heads), ``vit_small`` (384, 6), ``vit_base`` (768, 12),
            ``vit_large``, ``vit_huge``; depth 12 unless ``depth`` is given.
        image_size: Input side in pixels, a multiple of ``patch_size``.
        patch_size: Patch side in pixels (16 for 224 px; 4–8 for 32–64 px images).
        depth: Number of transformer blocks; ``None`` = the architecture's.
        mlp_ratio: MLP hidden width / token width.
    """

    def __init__(
        self,
        arch: ViTArch = "vit_small",
        image_size: int = 224,
        patch_size: int = 16,
        depth: int | None = None,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if arch not in VIT_ARCHS:
            raise ValueError(f"Unknown arch {arch!r}; choose one of {sorted(VIT_ARCHS)}")
        if image_size % patch_size or image_size // patch_size < 2:
            raise ValueError(
                f"image_size={image_size} must be a multiple of patch_size={patch_size} giving "
                f"a patch grid of at least 2x2; use e.g. patch_size 4 for 32 px images."
            )
        width, default_depth, heads = VIT_ARCHS[arch]
        self.embed_dim, self.num_heads = width, heads
        self.patch_size = patch_size
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.conv_proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        nn.init.trunc_normal_(self.conv_proj.weight, std=0.02)
        nn.init.zeros_(self.conv_proj.bias)  # type: ignore[arg-type]
        pos = sincos_pos_embed_2d(width, *self.grid)  # (N, D), fixed
        self.register_buffer("pos_embedding", pos, persistent=False)
        self.layers = transformer_blocks(width, depth or default_depth, heads, mlp_ratio)
        self.ln = nn.LayerNorm(width, eps=1e-6)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def tokens(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> patch tokens with positions ``(B, N, D)``."""
        x = self.conv_proj(images).flatten(2).transpose(1, 2)  # (B, N, D)
        if x.shape[1] != self.num_patches:
            raise ValueError(
                f"Got images of shape {tuple(images.shape)} giving {x.shape[1]} patches, but "
                f"the encoder was built for a {self.grid[0]}x{self.grid[1]} grid of "
                f"{self.patch_size} px patches; the DataModule's image_size and the model's "
                "must agree."
            )
        return x + self.pos_embedding.to(x.dtype)

    def forward(self, images: Tensor, keep: Tensor | None = None) -> Tensor:
        """Encoded tokens ``(B, N, D)``, or ``(B, K, D)`` for the ``keep (B, K)`` indices."""
        x = self.tokens(images)  # (B, N, D)
        if keep is not None:
            x = gather_tokens(x, keep)  # (B, K, D)
        return self.ln(self.layers(x))
