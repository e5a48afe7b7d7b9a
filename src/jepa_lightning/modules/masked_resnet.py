"""ResNet encoder that runs on masked images as if it were a sparse CNN (SparK-style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from jepa_lightning.modules.masked_bn import MaskedBatchNorm2d

SparseBackend = Literal["masked_dense", "minkowski"]

#: torchvision constructors the masked encoder accepts.
RESNETS: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
    "resnet152": torchvision.models.resnet152,
    "wide_resnet50_2": torchvision.models.wide_resnet50_2,
    "wide_resnet101_2": torchvision.models.wide_resnet101_2,
}


def set_last_stride(net: torchvision.models.ResNet, stride: int) -> None:
    """Set the stride of ``layer4``'s first block (its strided conv and its shortcut)."""
    if stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, not {stride!r}.")
    block = net.layer4[0]
    strided = block.conv2 if isinstance(block, Bottleneck) else block.conv1  # torchvision v1.5
    strided.stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


def _convert_bn(module: nn.Module) -> nn.Module:
    """Recursively replace ``BatchNorm2d`` by :class:`MaskedBatchNorm2d` (same state)."""
    if isinstance(module, nn.BatchNorm2d):
        return MaskedBatchNorm2d.from_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, MaskedBatchNorm2d.from_batchnorm(child))
        else:
            _convert_bn(child)
    return module


class MaskedResNet(nn.Module):
    """A torchvision ResNet trunk (no pooling, no classifier) with a masked ("sparse") mode.

    ``forward(x)`` is the ordinary dense ResNet. ``forward(x, mask)`` emulates sparse convolution
    on dense tensors: masked pixels are zeroed at the input, every BatchNorm normalises with
    statistics over visible positions only and writes 0 at masked positions, and the max-pool
    output is re-masked. Masked positions therefore stay exactly 0 through the network and no
    information from masked pixels reaches visible positions: the output at visible cells is a
    function of the visible pixels only. Convolutions in ResNets have no bias, so BN is the only
    place a masked position could become non-zero, and it is masked there.

    Module names equal torchvision's, so ``state_dict()`` loads into
    ``torchvision.models.<arch>()`` (with ``strict=False`` only for the missing ``fc``).

    Args:
        arch: torchvision ResNet name, one of :data:`RESNETS`.
        small_images: Replace the 7×7/2 stem and max-pool by a 3×3/1 stem (total stride 8
            instead of 32), so 32 px images give a 4×4 grid and 64 px an 8×8 grid.
        zero_init_residual: Zero-initialise the last BN of each residual block.
        last_stride: Stride of ``layer4`` (torchvision: 2). ``1`` halves the total stride
            (4 with ``small_images``: an 8×8 grid at 32 px) at about 1.8× the FLOPs of a
            ResNet-18; the parameters and ``state_dict`` keys are unchanged.
        backend: How the masked forward runs: ``masked_dense`` (default; dense tensors with
            masks, no host sync) or ``minkowski`` (true sparse convolution on the visible
            pixels with MinkowskiEngine, an optional extra; same parameters, same function,
            see :mod:`jepa_lightning.modules.minkowski`). The dense forward is the same.
    """

    #: :func:`export_torchvision_state_dict` writes this trunk as a torchvision ResNet state
    #: dict: :attr:`JEPAModule.exports_to_torchvision` reads it off the feature encoder.
    exports_to_torchvision: bool = True

    def __init__(
        self,
        arch: str = "resnet50",
        small_images: bool = False,
        zero_init_residual: bool = False,
        backend: SparseBackend = "masked_dense",
        last_stride: int = 2,
    ) -> None:
        super().__init__()
        if arch not in RESNETS:
            raise ValueError(
                f"Unknown backbone {arch!r}. Choose one of: {', '.join(sorted(RESNETS))}."
            )
        if backend not in ("masked_dense", "minkowski"):
            raise ValueError(f"backend must be 'masked_dense' or 'minkowski', not {backend!r}.")
        self.backend = backend
        self._minkowski = None
        if backend == "minkowski":
            from jepa_lightning.modules.minkowski import MinkowskiResNetForward

            self._minkowski = MinkowskiResNetForward()  # fails here, clearly, if not installed
        net = RESNETS[arch](weights=None, zero_init_residual=zero_init_residual)
        if small_images:
            net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, 1, 1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.maxpool = nn.Identity()  # type: ignore[assignment]
        set_last_stride(net, last_stride)
        self.arch = arch
        self.small_images = small_images
        self.last_stride = last_stride
        self.stride = (8 if small_images else 32) * last_stride // 2
        self.num_features: int = net.fc.in_features
        self.conv1 = net.conv1
        self.bn1 = _convert_bn(net.bn1)
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = _convert_bn(net.layer1)
        self.layer2 = _convert_bn(net.layer2)
        self.layer3 = _convert_bn(net.layer3)
        self.layer4 = _convert_bn(net.layer4)

    def grid_size(self, image_size: int) -> int:
        """Side of the output feature grid for square images of ``image_size`` pixels."""
        return image_size // self.stride

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Encode images.

        Args:
            x: ``(B, 3, H, W)`` images with ``H = h · stride`` and ``W = w · stride``.
            mask: ``(B, h, w)`` bool grid, ``True`` = visible; ``None`` runs the dense network.

        Returns:
            ``(B, C, h, w)`` feature map; exactly 0 at masked cells when ``mask`` is given.
        """
        if mask is None:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))
        _b, h, w = mask.shape
        if x.shape[-2] != h * self.stride or x.shape[-1] != w * self.stride:
            raise ValueError(
                f"Image size {tuple(x.shape[-2:])} does not match the {h}x{w} mask grid at stride "
                f"{self.stride} (expected {(h * self.stride, w * self.stride)})."
            )
        if self._minkowski is not None:
            return self._minkowski(self, x, mask)  # (B, C, h, w), 0 at masked cells
        grid = mask[:, None].to(x.dtype)  # (B, 1, h, w)
        cache: dict[int, Tensor] = {}

        def at(t: Tensor) -> Tensor:
            """The grid mask upsampled (nearest) to ``t``'s resolution: (B, 1, H_t, W_t)."""
            size = t.shape[-1]
            if size not in cache:
                f = size // w
                cache[size] = grid.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)
            return cache[size]

        x = x * at(x)  # (B, 3, H, W), masked pixels zeroed
        x = self.conv1(x)
        x = self.relu(self.bn1(x, at(x)))
        x = self.maxpool(x)
        x = x * at(x)  # max-pool can spread values into masked positions
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = _masked_block(block, x, at)
        return x  # (B, C, h, w)


def _masked_block(block: nn.Module, x: Tensor, at: Callable[[Tensor], Tensor]) -> Tensor:
    """Run one torchvision residual block in masked mode.

    Each BN receives the mask at its input's resolution (strided convs change resolution).
    """
    if not isinstance(block, (BasicBlock, Bottleneck)):
        raise TypeError(f"Unsupported residual block {type(block).__name__}")
    out = block.conv1(x)
    out = block.relu(block.bn1(out, at(out)))
    out = block.conv2(out)
    out = block.bn2(out, at(out))
    if isinstance(block, Bottleneck):
        out = block.conv3(block.relu(out))
        out = block.bn3(out, at(out))
    identity = x
    if block.downsample is not None:
        conv, bn = block.downsample[0], block.downsample[1]
        identity = conv(x)
        identity = bn(identity, at(identity))
    return block.relu(out + identity)


def masked_average_pool(features: Tensor, mask: Tensor | None = None) -> Tensor:
    """Global average pool ``(B, C, h, w) -> (B, C)``, over visible cells only if ``mask``."""
    if mask is None:
        return features.mean(dim=(2, 3))
    m = mask[:, None].to(features.dtype)  # (B, 1, h, w)
    return (features * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp_min(1.0)


@torch.no_grad()
def export_torchvision_state_dict(encoder: MaskedResNet) -> dict[str, Tensor]:
    """The encoder's weights under torchvision's key names (no ``fc``)."""
    return {k: v.detach().clone() for k, v in encoder.state_dict().items()}
