"""BatchNorm whose statistics see only visible (unmasked) positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskedBatchNorm2d(nn.Module):
    """BatchNorm2d for sparse (masked-dense) feature maps.

    With ``mask=None`` it is exactly :func:`torch.nn.functional.batch_norm` (the dense target
    encoder path). With a mask, batch mean and variance — and the running statistics — are
    computed over visible positions only, using sums and counts (no ``nonzero``, no boolean
    indexing, no host sync, ``torch.compile`` friendly), and masked positions are written as 0.

    The parameter and buffer names equal :class:`torch.nn.BatchNorm2d`'s, so state dicts
    exchange with torchvision models unchanged.

    NOTE: it deliberately does not subclass ``nn.modules.batchnorm._BatchNorm``: Lightning's
    ``sync_batchnorm=True`` converts every such subclass to a plain ``SyncBatchNorm`` and would
    silently drop the masking (a bug of the reference code).

    Args:
        num_features: Number of channels ``C``.
        eps: Added to the variance for numerical stability.
        momentum: Running-statistics momentum, as in PyTorch.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> MaskedBatchNorm2d:
        """Build from a ``BatchNorm2d``, copying its parameters and running statistics."""
        out = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum if bn.momentum else 0.1)
        out.load_state_dict(bn.state_dict())
        return out

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalise ``x``.

        Args:
            x: ``(B, C, H, W)`` features; positions where ``mask`` is 0 are ignored.
            mask: ``(B, 1, H, W)`` float mask with 1 = visible, or ``None`` for dense BN.

        Returns:
            ``(B, C, H, W)`` normalised features, exactly 0 at masked positions.
        """
        if mask is None:
            return F.batch_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                training=self.training,
                momentum=self.momentum,
                eps=self.eps,
            )
        mask = mask.to(x.dtype)
        if not self.training:
            scale = self.weight * torch.rsqrt(self.running_var + self.eps)  # (C,)
            shift = self.bias - self.running_mean * scale  # (C,)
            return (x * scale[:, None, None] + shift[:, None, None]) * mask
        # Statistics in float32 even under autocast.
        xf = x.float() * mask  # (B, C, H, W), 0 at masked positions
        count = mask.float().sum().clamp_min(1.0)  # visible positions over batch and space
        mean = xf.sum(dim=(0, 2, 3)) / count  # (C,)
        centred = (xf - mean[:, None, None]) * mask  # (B, C, H, W)
        var = centred.square().sum(dim=(0, 2, 3)) / count  # (C,) biased, for normalising
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            unbiased = var * (count / (count - 1).clamp_min(1.0))
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), self.momentum)
        scale = self.weight * torch.rsqrt(var + self.eps)  # (C,)
        out = centred * scale[:, None, None] + self.bias[:, None, None] * mask
        return out.to(x.dtype)
