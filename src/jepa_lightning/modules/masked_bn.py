"""BatchNorm whose statistics see only visible (unmasked) positions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
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
    silently drop the masking (a bug of the reference code). Instead, with ``sync = True`` (the
    JEPA modules set it when ``Trainer(sync_batchnorm=True)``) and ``torch.distributed``
    initialised with more than one process, training-mode statistics cover the global batch:
    the sums over visible positions and their counts are all-reduced, with gradients, so the
    result equals one process normalising the concatenated batch. The dense path then does the
    same with every position visible (``SyncBatchNorm`` semantics). It costs two small
    all-reduces per layer forward and two backward, and no host sync.

    Args:
        num_features: Number of channels ``C``.
        eps: Added to the variance for numerical stability.
        momentum: Running-statistics momentum, as in PyTorch.
        sync: Compute training statistics across all processes (see above).
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, sync: bool = False
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.sync = sync
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

    def _forward_synced(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Training-mode BN over the visible positions of every process's batch."""
        xf = x.float()  # statistics in float32 even under autocast
        mf = torch.ones_like(xf[:, :1]) if mask is None else mask.float()  # (B, 1, H, W)
        local = torch.cat([(xf * mf).sum(dim=(0, 2, 3)), mf.sum()[None]])  # (C + 1,)
        total = _AllReduceSum.apply(local)
        count = total[-1].clamp_min(1.0)  # visible positions of the global batch
        mean = total[:-1] / count  # (C,)
        centred = (xf - mean[:, None, None]) * mf  # (B, C, H, W), 0 at masked positions
        var = _AllReduceSum.apply(centred.square().sum(dim=(0, 2, 3))) / count  # (C,) biased
        self._update_running_stats(mean, var, count)
        scale = (self.weight.float() * torch.rsqrt(var + self.eps))[:, None, None]
        out = centred * scale + self.bias.float()[:, None, None] * mf
        return out.to(x.dtype)

    def batch_norm(self, x: Tensor) -> Tensor:
        """Ordinary BatchNorm of ``x`` — ``(B, C, H, W)``, or ``(N, C)`` features of the visible
        sites (the MinkowskiEngine backend) — with this layer's parameters and statistics."""
        if self.training:
            self.num_batches_tracked.add_(1)  # as nn.BatchNorm2d does
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

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalise ``x``.

        Args:
            x: ``(B, C, H, W)`` features; positions where ``mask`` is 0 are ignored.
            mask: ``(B, 1, H, W)`` float mask with 1 = visible, or ``None`` for dense BN.

        Returns:
            ``(B, C, H, W)`` normalised features, exactly 0 at masked positions.
        """
        if self.sync and self.training and _multi_process():
            return self._forward_synced(x, mask)
        if mask is None:
            return self.batch_norm(x)
        mask = mask.to(x.dtype)
        if not self.training:
            scale = self.weight * torch.rsqrt(self.running_var + self.eps)  # (C,)
            shift = self.bias - self.running_mean * scale  # (C,)
            return (x * scale[:, None, None] + shift[:, None, None]) * mask
        out, mean, var, count = _MaskedBatchNormFn.apply(x, mask, self.weight, self.bias, self.eps)
        self._update_running_stats(mean, var, count)
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        """Running statistics from the batch's visible-position mean and biased variance
        ``(C,)`` over ``count`` positions (unbiased for the running variance, as PyTorch)."""
        self.num_batches_tracked.add_(1)
        unbiased = var * (count / (count - 1).clamp_min(1.0))
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)


class _MaskedBatchNormFn(torch.autograd.Function):
    """Training-mode masked BN with a hand-written backward.

    Every sum is taken over *centred* values: a first pass gives the visible positions' mean
    ``μ̂``, and the variance and the backward's ``Σ dy·(x − μ)`` come from the centred, masked
    input ``xc = (x − μ̂)·m`` — the corrected two-pass form: ``c = Σ xc / n`` (of the size of
    ``μ̂``'s rounding error) corrects the mean, ``σ² = Σ xc² / n − c²``. The one-pass form
    (``E[x²] − μ²`` in the forward, ``Σ dy·x − μ·Σ dy`` and ``−k·x + k·μ`` in the backward)
    subtracts numbers of size ``|μ|`` to get results of size ``σ`` and loses ``log10(|μ|/σ)``
    digits and more: at ``|μ| = 100 σ`` its float32 outputs and gradients were ~3e-4 off
    float64, now ~1e-7 (``tests/modules/test_masked_bn_numerics.py``). Computation is in float32
    even under autocast (float64 for float64 inputs); ``xc`` is the only ``(B, C, H, W)`` tensor
    kept for the backward, as the input was before.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, mask: Tensor, weight: Tensor, bias: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        in_dtype = x.dtype
        acc = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for doubles
        xf, mf = x.to(acc), mask.to(acc)  # (B, C, H, W), (B, 1, H, W)
        count = mf.sum().clamp_min(1.0)  # visible positions over batch and space
        ratio = (xf.numel() // xf.shape[1]) / count  # all positions / visible positions
        rough = (xf * mf).sum(dim=(0, 2, 3)) / count  # (C,) μ̂, off by its rounding error
        xc = (xf - rough[:, None, None]).mul_(mf)  # (B, C, H, W) centred, 0 at masked positions
        # One fused pass over xc: its moments over all positions give the visible ones (xc is 0
        # at masked positions). c = mean of xc over visible positions, ~0: nothing cancels.
        var_all, mean_all = torch.var_mean(xc, dim=(0, 2, 3), correction=0)  # (C,)
        c = mean_all * ratio
        var = ((var_all + mean_all.square()) * ratio - c.square()).clamp_min(0.0)  # biased
        invstd = torch.rsqrt(var + eps)
        w, b = weight.to(acc), bias.to(acc)
        scale = w * invstd  # (C,)
        shift = (b - c * scale)[:, None, None]  # out = (xc − c)·scale + b at visible positions
        out = torch.addcmul(shift, xc, scale[:, None, None]).mul_(mf)
        ctx.save_for_backward(xc, mf, w, c, invstd, count)
        ctx.in_dtype = in_dtype
        mean = rough + c
        ctx.mark_non_differentiable(mean, var, count)
        return out.to(in_dtype), mean, var, count

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: Tensor, *_: Tensor
    ) -> tuple[Tensor, None, Tensor, Tensor, None]:
        xc, mf, w, c, invstd, count = ctx.saved_tensors
        dym = grad_out.to(mf.dtype) * mf  # (B, C, H, W), visible positions only
        sum_dy = dym.sum(dim=(0, 2, 3))  # (C,)
        # Σ dy·(x − μ) = Σ dy·xc − c·Σ dy: a sum of centred products and a tiny correction.
        sum_dy_xmu = (dym * xc).sum(dim=(0, 2, 3)) - c * sum_dy  # (C,)
        grad_weight = sum_dy_xmu * invstd
        k1 = w * invstd
        k3 = w * invstd.pow(3) * sum_dy_xmu / count
        # dx = m · (k1·dy − k3·(x − μ) − k1·Σdy / n) with x − μ = xc − c: the constant terms,
        # k3·c − k1·Σdy / n, are small, so xc is never scaled against a large constant.
        k0 = (k3 * c - k1 * sum_dy / count)[:, None, None]
        grad_x = (dym * k1[:, None, None]).sub_(xc * k3[:, None, None]).add_(k0).mul_(mf)
        return grad_x.to(ctx.in_dtype), None, grad_weight.to(w.dtype), sum_dy, None


def _multi_process() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over all processes; the backward sums the gradients over all processes too (each
    rank's input feeds every rank's output). Same maths as
    ``torch.distributed.nn.functional.all_reduce``, which torch 2.14 deprecates with a warning
    on every call."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """Recompute every BatchNorm's running statistics (``nn.BatchNorm*`` and
    :class:`MaskedBatchNorm2d`) as the plain average over ``batches`` of full images, in place.

    The context encoder's running statistics were gathered on masked images; evaluated on full
    images it loses k-NN accuracy that recalibration restores (on CIFAR-10, 34.3 -> 37.2 after
    750 steps: ``benchmarks/curves/online_vs_target.py``). The same as torch's
    :func:`torch.optim.swa_utils.update_bn` (which skips :class:`MaskedBatchNorm2d`): momentum
    ``1 / (k + 1)`` at the ``k``-th batch makes the running value the mean of the batch values.
    The module's train/eval mode is restored.

    Example:
        >>> import torch
        >>> from jepa_lightning.modules import MaskedResNet, recalibrate_batchnorm
        >>> encoder = MaskedResNet("resnet18", small_images=True)
        >>> _ = recalibrate_batchnorm(encoder, torch.randn(64, 3, 32, 32).split(32))
        >>> int(encoder.bn1.num_batches_tracked)
        2
    """
    norms = [
        m
        for m in module.modules()
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, MaskedBatchNorm2d))
        and m.running_mean is not None
    ]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
        m.num_batches_tracked.zero_()
    was_training = module.training
    module.train()
    for k, images in enumerate(batches):
        for m in norms:
            m.momentum = 1.0 / (k + 1)
        module(images)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return module.train(was_training)
