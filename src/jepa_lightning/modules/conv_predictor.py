"""CNN-JEPA's fully convolutional, depthwise-separable predictor."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn


class ConvPredictor(nn.Module):
    """Predict target features at every cell of the context feature map.

    Masked cells of the context map are replaced by one learned mask token, then ``depth``
    layers of ``[depthwise k×k conv ('same') -> 1×1 conv -> BatchNorm -> ReLU]`` run on the
    grid. There is no positional embedding: position is implicit in the grid. With
    ``channels = 2048`` and the defaults this has ≈ 12.7 M parameters, as the paper reports.

    Args:
        channels: Input and output width ``C`` (the encoder's feature width).
        depth: Number of layers (paper: 3; 2 is about as good).
        kernel_size: Depthwise kernel size (odd).
        hidden_channels: Width of the hidden layers; ``None`` keeps ``channels`` (paper).
        linear_output: End with ``[depthwise -> 1×1 conv with bias]``, without BatchNorm and
            ReLU, so predictions can be negative. The paper ends with BN + ReLU, which suits its
            non-negative targets (a ResNet's output after ReLU) but cannot match standardised
            targets, which are negative in about half their entries.
    """

    def __init__(
        self,
        channels: int,
        depth: int = 3,
        kernel_size: int = 3,
        hidden_channels: int | None = None,
        linear_output: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"predictor depth must be >= 1, got {depth}")
        if kernel_size % 2 != 1:
            raise ValueError(f"predictor kernel_size must be odd, got {kernel_size}")
        hidden = hidden_channels or channels
        widths = [channels] + [hidden] * (depth - 1) + [channels]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
            last = linear_output and i == depth - 1
            layers += [
                nn.Conv2d(
                    c_in, c_in, kernel_size, padding=kernel_size // 2, groups=c_in, bias=False
                ),
                nn.Conv2d(c_in, c_out, 1, bias=last),
            ]
            if not last:
                layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)
        self.mask_token = nn.Parameter(torch.zeros(1, channels, 1, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, context: Tensor, visible: Tensor) -> Tensor:
        """Predict.

        Args:
            context: ``(B, C, h, w)`` context-encoder features.
            visible: ``(B, h, w)`` bool, ``True`` where the context encoder saw the cell.

        Returns:
            ``(B, C, h, w)`` predicted target features at every cell.
        """
        v = visible[:, None].to(context.dtype)  # (B, 1, h, w)
        x = context * v + self.mask_token.to(context.dtype) * (1 - v)
        return self.layers(x)
