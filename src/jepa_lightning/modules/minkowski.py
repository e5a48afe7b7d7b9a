"""MinkowskiEngine backend of the masked ResNet: true sparse convolution on visible pixels.

:class:`~jepa_lightning.modules.MaskedResNet` emulates a sparse CNN on dense tensors
(``backend="masked_dense"``). With ``backend="minkowski"`` the masked forward instead runs on a
``MinkowskiEngine.SparseTensor`` holding only the visible pixels, so convolutions compute only
there. Both backends use the **same parameters** — the torchvision ``nn.Conv2d`` /
BatchNorm weights of the encoder, reshaped into Minkowski kernels at every call — so
checkpoints, EMA and export are unchanged, and both compute the same function:

* a ``k×k`` convolution with padding ``k // 2`` and stride ``s`` is Minkowski's hyper-cube
  kernel of size ``k`` and stride ``s`` (centred kernel; output sites = input sites
  downsampled by ``s``, which equals the downsampled grid mask because mask cells are aligned
  to the total stride);
* BatchNorm is :func:`torch.nn.functional.batch_norm` on the ``(N_visible, C)`` features —
  statistics over visible positions, like :class:`MaskedBatchNorm2d`;
* max-pooling after ReLU sees values ``>= 0``, so pooling over active sites only equals the
  dense max with masked zeros.

MinkowskiEngine (0.5.4, 2021) is an optional dependency: ``pip install -e ".[minkowski]"``
and the build steps in docs/cnn_jepa.md. It is imported only when this backend is used.
"""

from __future__ import annotations

import collections
import collections.abc
import warnings
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

INSTALL_HINT = (
    "MinkowskiEngine is not installed, so backend='minkowski' cannot run. It is an optional "
    "extra built from source (CPU build, about 6 minutes on 2 cores): run "
    "`bash scripts/install_minkowski.sh` in the repository (docs/cnn_jepa.md, 'Optional "
    "sparse backend: MinkowskiEngine'). Or use backend='masked_dense' (the default), which "
    "computes the same function."
)


def import_minkowski() -> ModuleType:
    """Import MinkowskiEngine (with the shim it needs on Python >= 3.10), or say how to get it."""
    # NOTE: MinkowskiEngine 0.5.4 uses ``collections.Sequence``, removed in Python 3.10.
    if not hasattr(collections, "Sequence"):
        collections.Sequence = collections.abc.Sequence  # type: ignore[attr-defined]
    try:
        with warnings.catch_warnings():  # "compiled with CPU_ONLY": expected for CPU builds
            warnings.simplefilter("ignore", UserWarning)
            import MinkowskiEngine as ME
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return ME


def conv_kernel(weight: Tensor) -> Tensor:
    """torch ``(out, in, kh, kw)`` weight -> Minkowski kernel ``(kh·kw, in, out)``.

    Minkowski's hyper-cube kernel index runs over the first spatial axis fastest
    (``index = i_row + kh · i_col`` with our coordinates ``(batch, row, col)``).
    """
    out_c, in_c, kh, kw = weight.shape
    return weight.permute(3, 2, 1, 0).reshape(kh * kw, in_c, out_c).contiguous()


class MinkowskiResNetForward:
    """The masked forward of a :class:`MaskedResNet` on MinkowskiEngine sparse tensors.

    Holds no parameters of its own (it is not an ``nn.Module``): the encoder passes itself in.
    """

    def __init__(self) -> None:
        self.ME = import_minkowski()
        self._convs: dict[int, Any] = {}  # id(nn.Conv2d) -> its Minkowski twin (no weights)
        self._pool: Any = None

    def __deepcopy__(self, memo: dict[int, Any]) -> MinkowskiResNetForward:
        return MinkowskiResNetForward()  # stateless apart from caches keyed by module identity

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    # ------------------------------------------------------------------ layers
    def _conv(self, conv: nn.Conv2d, x: Any) -> Any:
        k, s = conv.kernel_size[0], conv.stride[0]
        if (
            conv.kernel_size[0] != conv.kernel_size[1]
            or conv.padding != (k // 2, k // 2)
            or conv.dilation != (1, 1)
            or conv.groups != 1
            or conv.bias is not None
        ):
            raise ValueError(f"Unsupported convolution for the Minkowski backend: {conv}")
        if k == 1 and s == 1:
            # NOTE: a plain matmul on the same sites. MinkowskiEngine 0.5.4's CPU convolution
            # returned uninitialised values for 1×1 stride-1 kernels in our build.
            return self._features(x, x.F @ conv.weight[:, :, 0, 0].T)  # (N, out)
        me = self._convs.get(id(conv))
        if me is None:
            me = self.ME.MinkowskiConvolution(
                conv.in_channels, conv.out_channels, kernel_size=k, stride=s, dimension=2
            )
            del me.kernel  # the kernel is the torch weight, reshaped at every call
            self._convs[id(conv)] = me
        me.kernel = conv_kernel(conv.weight)  # (k·k, in, out)
        return me(x)

    def _features(self, x: Any, features: Tensor) -> Any:
        """A sparse tensor on ``x``'s sites with new features."""
        return self.ME.SparseTensor(
            features,
            coordinate_map_key=x.coordinate_map_key,
            coordinate_manager=x.coordinate_manager,
        )

    def _bn(self, bn: nn.Module, x: Any, relu: bool = False) -> Any:
        """BatchNorm over the visible sites, with the encoder's own parameters and buffers."""
        out = bn.batch_norm(x.F)  # (N, C): statistics over visible positions
        return self._features(x, torch.relu(out) if relu else out)

    def _block(self, block: nn.Module, x: Any) -> Any:
        if not isinstance(block, (BasicBlock, Bottleneck)):
            raise TypeError(f"Unsupported residual block {type(block).__name__}")
        out = self._bn(block.bn1, self._conv(block.conv1, x), relu=True)
        out = self._bn(block.bn2, self._conv(block.conv2, out), relu=isinstance(block, Bottleneck))
        if isinstance(block, Bottleneck):
            out = self._bn(block.bn3, self._conv(block.conv3, out))
        identity = x
        if block.downsample is not None:
            identity = self._bn(block.downsample[1], self._conv(block.downsample[0], x))
        summed = out + identity  # same sites (same coordinate map)
        return self._features(summed, torch.relu(summed.F))

    # ------------------------------------------------------------------ forward
    def __call__(self, encoder: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
        """``x (B, 3, H, W)``, grid ``mask (B, h, w)`` -> ``(B, C, h, w)``, 0 at masked cells."""
        b, h, w = mask.shape
        stride = encoder.stride
        pixels = mask.repeat_interleave(stride, dim=1).repeat_interleave(stride, dim=2)  # (B,H,W)
        coords = pixels.nonzero().int().cpu().contiguous()  # (N, 3): batch, row, col
        if coords.shape[0] == 0:
            raise ValueError("The Minkowski backend needs at least one visible cell per batch.")
        feats = x.permute(0, 2, 3, 1)[pixels]  # (N, 3) visible pixels
        t = self.ME.SparseTensor(feats, coordinates=coords, device=str(x.device))
        t = self._bn(encoder.bn1, self._conv(encoder.conv1, t), relu=True)
        if not isinstance(encoder.maxpool, nn.Identity):
            mp = encoder.maxpool
            if self._pool is None:
                self._pool = self.ME.MinkowskiMaxPooling(
                    kernel_size=mp.kernel_size, stride=mp.stride, dimension=2
                )
            t = self._pool(t)  # inputs are >= 0 after ReLU: equals the dense masked max
        for layer in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4):
            for block in layer:
                t = self._block(block, t)
        c = t.F.shape[1]
        site = t.C.long().to(x.device)  # (n, 3) in pixels, multiples of the total stride
        cells = (site[:, 0], site[:, 1] // stride, site[:, 2] // stride)
        dense = t.F.new_zeros(b, h, w, c).index_put(cells, t.F)  # (B, h, w, C)
        return dense.permute(0, 3, 1, 2)  # (B, C, h, w)
