"""I-JEPA's narrow transformer predictor."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from jepa_lightning.modules.vit import sincos_pos_embed_2d, transformer_blocks


class ViTPredictor(nn.Module):
    """Predicts target-encoder tokens at the target positions from the context tokens.

    Context tokens are projected to the predictor width and get their positional embedding
    added; each target block contributes one learned mask token per target patch plus that
    patch's positional embedding. One sequence ``[context, mask tokens of block k]`` per block
    runs through the transformer (as the reference, blocks do not see each other), and the
    outputs at the mask tokens are projected back to the encoder width.

    Unlike lightly's ``IJEPAPredictor.from_vit_encoder`` (width hard-coded to 768), every width
    is taken from the arguments.

    Args:
        encoder_dim: Token width of the encoders (input and output width).
        grid: ``(H, W)`` patch grid of the encoders.
        embed_dim: Predictor width (I-JEPA: 384).
        depth: Number of transformer blocks (I-JEPA ViT-H: 12).
        num_heads: Attention heads; must divide ``embed_dim``.
        mlp_ratio: MLP hidden width / token width.
    """

    def __init__(
        self,
        encoder_dim: int,
        grid: tuple[int, int],
        embed_dim: int = 384,
        depth: int = 6,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.predictor_embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos = sincos_pos_embed_2d(embed_dim, *grid)  # (N, P), fixed
        self.register_buffer("pos_embedding", pos, persistent=False)
        self.layers = transformer_blocks(embed_dim, depth, num_heads, mlp_ratio)
        self.ln = nn.LayerNorm(embed_dim, eps=1e-6)
        self.predictor_proj = nn.Linear(embed_dim, encoder_dim)
        for linear in (self.predictor_embed, self.predictor_proj):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, context: Tensor, context_idx: Tensor, target_idx: Tensor) -> Tensor:
        """Predictions ``(B, n_blocks, Nt, encoder_dim)``.

        Args:
            context: ``(B, Nc, D)`` context-encoder outputs.
            context_idx: ``(B, Nc)`` patch indices of the context tokens.
            target_idx: ``(B, n_blocks, Nt)`` patch indices to predict.
        """
        b, n, nt = target_idx.shape
        nc = context.shape[1]
        pos = self.pos_embedding.to(context.dtype)  # (N, P)
        x = self.predictor_embed(context) + pos[context_idx]  # (B, Nc, P)
        x = x.unsqueeze(1).expand(b, n, nc, x.shape[-1]).reshape(b * n, nc, -1)  # (B·n, Nc, P)
        queries = self.mask_token + pos[target_idx.reshape(b * n, nt)]  # (B·n, Nt, P)
        z = self.ln(self.layers(torch.cat([x, queries], dim=1)))  # (B·n, Nc + Nt, P)
        out = self.predictor_proj(z[:, nc:])  # (B·n, Nt, D)
        return out.view(b, n, nt, -1)
