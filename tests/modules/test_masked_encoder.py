"""The masked ("sparse") ResNet: no leakage from masked pixels, exact masked BN, no host sync."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from jepa_lightning.masking import MultiBlockMasking
from jepa_lightning.modules import MaskedBatchNorm2d, MaskedResNet


def _grid_masks(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    visible = torch.rand(b, h, w, generator=g) > 0.5
    visible[:, 0, 0] = True  # at least one visible cell per image
    visible[:, -1, -1] = False  # at least one masked cell per image
    return visible


def _upsample(visible: torch.Tensor, stride: int) -> torch.Tensor:
    return visible.repeat_interleave(stride, 1).repeat_interleave(stride, 2)[:, None]


@pytest.mark.parametrize(
    ("arch", "small", "size", "last_stride"),
    [
        ("resnet18", False, 96, 2),
        ("resnet34", False, 96, 2),
        ("resnet50", False, 96, 2),
        ("wide_resnet50_2", False, 64, 2),
        ("resnet18", True, 32, 2),
        ("resnet50", True, 32, 2),
        ("resnet18", True, 32, 1),  # 8x8 grid at 32 px
        ("resnet50", False, 64, 1),  # Bottleneck: the strided conv is conv2
    ],
)
@pytest.mark.parametrize("train", [True, False])
def test_masked_pixels_cannot_change_context_features(
    arch: str, small: bool, size: int, last_stride: int, train: bool
) -> None:
    torch.manual_seed(0)
    enc = MaskedResNet(arch, small_images=small, last_stride=last_stride).train(train)
    assert enc.stride == (8 if small else 32) * last_stride // 2
    # Non-trivial running statistics and affine parameters for eval mode.
    for m in enc.modules():
        if isinstance(m, MaskedBatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    grid = size // enc.stride
    visible = _grid_masks(2, grid, grid)
    x1 = torch.randn(2, 3, size, size)
    noise = torch.randn_like(x1) * 10
    x2 = torch.where(_upsample(visible, enc.stride), x1, noise)  # masked pixels changed
    assert not torch.equal(x1, x2)
    with torch.no_grad():
        y1 = enc(x1, visible)
        y2 = enc(x2, visible)
    assert y1.shape == (2, enc.num_features, grid, grid)
    assert torch.equal(y1, y2)  # bitwise: masked pixels contribute exact zeros
    masked = ~visible[:, None].expand_as(y1)
    assert (y1[masked] == 0).all()
    assert y1[~masked].abs().sum() > 0
    # The dense path does see the change.
    with torch.no_grad():
        assert not torch.allclose(enc(x1), enc(x2))


def test_masked_bn_matches_reference_on_gathered_visible_positions() -> None:
    torch.manual_seed(1)
    c = 6
    x = torch.randn(4, c, 5, 5) * 3 + 1
    visible = torch.rand(4, 1, 5, 5) > 0.4
    mbn = MaskedBatchNorm2d(c, momentum=0.2)
    mbn.weight.data.uniform_(0.5, 2)
    mbn.bias.data.uniform_(-1, 1)
    ref = nn.BatchNorm1d(c, momentum=0.2)
    ref.load_state_dict(mbn.state_dict())
    y = mbn(x, visible.float())
    gathered = x.permute(0, 2, 3, 1)[visible[:, 0]]  # (N_visible, C)
    y_ref = ref(gathered)
    torch.testing.assert_close(y.permute(0, 2, 3, 1)[visible[:, 0]], y_ref, rtol=1e-5, atol=1e-5)
    assert (y.permute(0, 2, 3, 1)[~visible[:, 0]] == 0).all()
    torch.testing.assert_close(mbn.running_mean, ref.running_mean)
    torch.testing.assert_close(mbn.running_var, ref.running_var)
    assert mbn.num_batches_tracked.item() == 1
    # Eval mode uses the running statistics, still 0 at masked positions.
    mbn.eval()
    ref.eval()
    y = mbn(x, visible.float())
    torch.testing.assert_close(
        y.permute(0, 2, 3, 1)[visible[:, 0]], ref(gathered), rtol=1e-5, atol=1e-5
    )
    assert (y.permute(0, 2, 3, 1)[~visible[:, 0]] == 0).all()


def test_masked_bn_without_mask_is_batchnorm2d() -> None:
    torch.manual_seed(2)
    bn = nn.BatchNorm2d(4)
    mbn = MaskedBatchNorm2d.from_batchnorm(bn)
    x = torch.randn(3, 4, 6, 6)
    torch.testing.assert_close(mbn(x), bn(x))
    torch.testing.assert_close(mbn.running_var, bn.running_var)


def test_masked_bn_gradients_match_reference() -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    visible = torch.rand(2, 1, 4, 4) > 0.5
    mbn = MaskedBatchNorm2d(3)
    (mbn(x, visible.float()) ** 2).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ref = nn.BatchNorm1d(3)
    (ref(x_ref.permute(0, 2, 3, 1)[visible[:, 0]]) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mbn.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mbn.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-5)


def test_masked_bn_under_bf16_autocast_keeps_dtype_and_mask() -> None:
    x = torch.randn(2, 3, 4, 4).bfloat16()
    visible = torch.rand(2, 1, 4, 4) > 0.5
    y = MaskedBatchNorm2d(3)(x, visible.float())
    assert y.dtype == torch.bfloat16
    assert (y.permute(0, 2, 3, 1)[~visible[:, 0]] == 0).all()
    ref = nn.BatchNorm1d(3)(x.float().permute(0, 2, 3, 1)[visible[:, 0]])
    got = y.float().permute(0, 2, 3, 1)[visible[:, 0]]
    torch.testing.assert_close(got, ref, atol=0.05, rtol=0.02)


class _OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.bool_index = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = str(func.overloadpacket.__name__)
        self.ops.append(name)
        if name in {"index", "index_put", "index_put_"}:
            indices = args[1] if len(args) > 1 else []
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or []):
                self.bool_index = True
        return func(*args, **(kwargs or {}))


def test_masked_forward_and_backward_record_no_host_sync_ops() -> None:
    enc = MaskedResNet("resnet18", small_images=True)
    x = torch.randn(2, 3, 32, 32)
    visible = MultiBlockMasking(min_context=2)(2, 4, 4).context
    rec = _OpRecorder()
    with rec:
        enc(x, visible).sum().backward()
    forbidden = {"nonzero", "_local_scalar_dense", "masked_select", "item", "nonzero_static"}
    assert not forbidden & set(rec.ops), forbidden & set(rec.ops)
    assert not rec.bool_index
    assert "convolution" in rec.ops  # the recorder did see the forward


def test_unknown_backbone_and_state_dict_compatible_with_torchvision() -> None:
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet17'.*resnet18"):
        MaskedResNet("resnet17")
    enc = MaskedResNet("resnet50")
    tv = torchvision.models.resnet50()
    missing, unexpected = tv.load_state_dict(enc.state_dict(), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    tv.fc = nn.Identity()
    tv.eval()
    enc.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tv(x), enc(x).mean((2, 3)))
