"""The CUDA path: masked encoder and masked BatchNorm on CUDA tensors, bf16 autocast, compile.

Every test here is marked ``gpu`` and skipped when ``torch.cuda.is_available()`` is False, so
the CPU suite only collects them. ``benchmarks/gpu/gpu_check.sh`` (part 1) runs them on a GPU::

    python -m pytest tests/modules/test_gpu.py -m gpu -v

What is checked, on the device against the CPU or against eager mode:

* masked BatchNorm and the masked ResNet, forward and the hand-written backward, in float64
  (equal to the CPU up to rounding) and in float32 (within the CPU's own float32 rounding of
  the exact result: see :func:`_check_fp32`);
* no leakage: masked pixels change neither the visible context features nor any gradient,
  bitwise, in float32 and under bf16 autocast;
* bf16 autocast: masked cells exactly 0, loss and gradients finite, loss near the fp32 one;
* no host synchronisation in the masked forward/backward (``set_sync_debug_mode("error")``);
* a CNN-JEPA and a C-JEPA step under ``torch.compile`` (Triton kernels) and the masked encoder
  under CUDA graphs (``mode="reduce-overhead"``) equal eager.

fp32 checks run with TF32 off and deterministic cuDNN algorithms. ``JEPA_GPU_TESTS_DEVICE=cpu``
runs the same code on the CPU (device-against-CPU comparisons then compare the CPU with itself,
CUDA-only checks skip): a way to check the tests themselves without a GPU. ``jepa_lightning`` is
imported inside the tests so that collecting and skipping this file stays fast.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

DEVICE = torch.device(os.environ.get("JEPA_GPU_TESTS_DEVICE", "cuda"))
CPU = torch.device("cpu")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE.type == "cuda" and not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch.cuda.is_available() is False)",
    ),
]

needs_cuda = pytest.mark.skipif(DEVICE.type != "cuda", reason="a CUDA-only check")

Record = Callable[[str, object], None]

#: ``(factor, floor)`` of :func:`_check_fp32` for two eager implementations (device vs CPU).
EAGER_TOL = (10.0, 1e-4)
#: ... and for compiled vs eager: inductor's fused reductions round differently, and the masked
#: BatchNorm's moment formulas (``E[x²] - E[x]²``, ``Σdy·x - μ·Σdy``) amplify that. Measured on
#: CPU inductor (ResNet-18, 4x4 grid, batch 16): compiled fp32 early-layer gradients 4e-3 from
#: eager where eager is 3e-4 from float64 (12x); in float64 both agree to 1e-14 (test_compile).
COMPILED_TOL = (30.0, 1e-3)


@pytest.fixture(autouse=True)
def _strict_fp32() -> Iterator[None]:
    """IEEE float32 convolutions and matmuls (no TF32) and deterministic cuDNN algorithms."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark)
    cudnn.allow_tf32, matmul.allow_tf32 = False, False
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark = saved


def _autocast(bf16: bool) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16)


def _visible(b: int, grid: int, g: torch.Generator) -> Tensor:
    """``(B, grid, grid)`` bool, about half visible, at least one visible and one masked cell."""
    visible = torch.rand(b, grid, grid, generator=g) > 0.5
    visible[:, 0, 0] = True
    visible[:, -1, -1] = False
    return visible


def _upsample(visible: Tensor, stride: int) -> Tensor:
    """``(B, h, w)`` cell mask -> ``(B, 1, h·stride, w·stride)`` pixel mask."""
    return visible.repeat_interleave(stride, 1).repeat_interleave(stride, 2)[:, None]


def _rel(a: Tensor, b: Tensor) -> float:
    """Relative L2 distance ``||a - b|| / ||b||``, computed in float64 on the CPU."""
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    diff = float((a64 - b64).norm())
    return 0.0 if diff == 0 else diff / max(float(b64.norm()), 1e-30)


def _worst(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, float]:
    """Largest :func:`_rel` per group of keys (the part before ``/``: out, grad, buffer, ...)."""
    assert a.keys() == b.keys()
    worst: dict[str, float] = {}
    for key in a:
        group = key.split("/")[0]
        worst[group] = max(worst.get(group, 0.0), _rel(a[key], b[key]))
    return worst


def _check_fp32(
    name: str,
    got: dict[str, Tensor],
    ref32: dict[str, Tensor],
    ref64: dict[str, Tensor],
    record: Record,
    tol: tuple[float, float] = EAGER_TOL,
) -> None:
    """``got`` (float32) equals ``ref32`` (float32, another implementation) to float tolerance.

    The tolerance is measured, not guessed: ``noise = rel(ref32, ref64)`` is how far float32
    rounding moves the reference from the exact (float64) result in this very computation. A
    correct implementation differs from ``ref32`` by about that much (the last masked stages of
    a ResNet amplify rounding to ~1e-2 relative in some gradients; see ``test_compile.py``), a
    wrong one (a leak into the statistics, a wrong backward) by O(1). Checked per group as the
    worst tensor: ``err <= factor·noise + floor`` with ``tol = (factor, floor)``.
    """
    factor, floor = tol
    err, noise = _worst(got, ref32), _worst(ref32, ref64)
    for group in err:
        record(f"{name}/{group}/err", f"{err[group]:.3g}")
        record(f"{name}/{group}/fp32_noise", f"{noise[group]:.3g}")
    bad = {g: (err[g], noise[g]) for g in err if err[g] > factor * noise[g] + floor}
    assert not bad, f"{name}: (error, fp32 noise) beyond {factor}·noise + {floor}: {bad}"


def _encoder_step(
    enc: nn.Module, x: Tensor, visible: Tensor, grad_out: Tensor
) -> dict[str, Tensor]:
    """Masked forward + backward of ``enc``: output, gradients, BatchNorm statistics (copies)."""
    xg = x.detach().clone().requires_grad_(True)  # (B, 3, H, W)
    enc.zero_grad(set_to_none=True)
    y = enc(xg, visible)  # (B, C, h, w)
    (y * grad_out).sum().backward()
    res = {"out": y, "grad/x": xg.grad}
    res.update({f"grad/{n}": p.grad for n, p in enc.named_parameters()})
    res.update({f"buffer/{n}": b for n, b in enc.named_buffers() if b.is_floating_point()})
    return {k: v.detach().clone() for k, v in res.items()}  # type: ignore[union-attr]


def _assert_zero_at_masked_cells(features: Tensor, visible: Tensor) -> None:
    """``features`` ``(B, C, h, w)`` is exactly 0 where ``visible`` ``(B, h, w)`` is False."""
    hidden = ~visible.to(features.device)[:, None].expand_as(features)
    assert torch.all(features[hidden] == 0)
    assert features[~hidden].abs().sum() > 0


@pytest.mark.parametrize("channels_last", [False, True])
def test_masked_bn_forward_backward_on_device_equals_cpu(channels_last: bool) -> None:
    from jepa_lightning.modules import MaskedBatchNorm2d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, 9, 9, generator=g) * 3 + 1  # (B, C, H, W)
    mask = (torch.rand(8, 1, 9, 9, generator=g) > 0.4).float()  # (B, 1, H, W), 1 = visible
    grad_out = torch.randn(x.shape, generator=g)
    bn = MaskedBatchNorm2d(16, momentum=0.2)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0, generator=g)
        bn.bias.uniform_(-1.0, 1.0, generator=g)
    results = []
    for device in (CPU, DEVICE):
        layer = copy.deepcopy(bn).to(device).train()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        xd = x.to(device).contiguous(memory_format=fmt).detach().requires_grad_(True)
        y = layer(xd, mask.to(device))
        (y * grad_out.to(device)).sum().backward()
        y_eval = layer.eval()(xd.detach(), mask.to(device))  # running statistics
        hidden = (mask.to(device) == 0).expand_as(y)
        assert torch.all(y[hidden] == 0) and torch.all(y_eval[hidden] == 0)
        res = {"out": y, "eval": y_eval, "grad_x": xd.grad, "grad_w": layer.weight.grad}
        res |= {"grad_b": layer.bias.grad, **dict(layer.named_buffers())}
        results.append({k: v.detach().cpu() for k, v in res.items()})  # type: ignore[union-attr]
    cpu, dev = results
    for key in cpu:
        torch.testing.assert_close(dev[key], cpu[key], rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.parametrize(
    ("arch", "small", "size"), [("resnet18", True, 32), ("resnet50", False, 96)]
)
def test_masked_encoder_forward_backward_on_device_equals_cpu(
    arch: str, small: bool, size: int, record_property: Record
) -> None:
    from jepa_lightning.modules import MaskedResNet

    torch.set_num_threads(max(torch.get_num_threads(), min(4, os.cpu_count() or 1)))  # CPU side
    torch.manual_seed(0)
    enc = MaskedResNet(arch, small_images=small).train()
    grid = size // enc.stride
    g = torch.Generator().manual_seed(0)
    visible = _visible(8, grid, g)
    x = torch.randn(8, 3, size, size, generator=g)
    grad_out = torch.randn(8, enc.num_features, grid, grid, generator=g)
    res: dict[tuple[str, torch.dtype], dict[str, Tensor]] = {}
    for where, device in (("cpu", CPU), ("device", DEVICE)):
        for dtype in (torch.float64, torch.float32):
            model = copy.deepcopy(enc).to(device, dtype)
            res[where, dtype] = _encoder_step(
                model, x.to(device, dtype), visible.to(device), grad_out.to(device, dtype)
            )
            _assert_zero_at_masked_cells(res[where, dtype]["out"], visible)
    # float64: the same function, forward and backward, up to rounding.
    err64 = _worst(res["device", torch.float64], res["cpu", torch.float64])
    record_property(f"{arch}/fp64_err", str(err64))
    assert max(err64.values()) < 1e-8, err64
    # float32: the device's result is as close to the CPU's as float32 rounding allows.
    _check_fp32(
        arch,
        res["device", torch.float32],
        res["cpu", torch.float32],
        res["cpu", torch.float64],
        record_property,
    )


@pytest.mark.parametrize(
    ("arch", "small", "size"),
    [("resnet18", False, 96), ("resnet50", False, 96), ("resnet18", True, 32)],
)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("bf16", [False, True])
def test_masked_pixels_cannot_change_context_features_on_device(
    arch: str, small: bool, size: int, train: bool, bf16: bool
) -> None:
    from jepa_lightning.modules import MaskedBatchNorm2d, MaskedResNet

    torch.manual_seed(0)
    enc = MaskedResNet(arch, small_images=small)
    for m in enc.modules():  # non-trivial running statistics and affine parameters (eval mode)
        if isinstance(m, MaskedBatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    enc = enc.to(DEVICE).train(train)
    grid = size // enc.stride
    g = torch.Generator().manual_seed(0)
    visible = _visible(4, grid, g)
    pixels = _upsample(visible, enc.stride)  # (B, 1, H, W)
    x1 = torch.randn(4, 3, size, size, generator=g)
    x2 = torch.where(pixels, x1, torch.randn(x1.shape, generator=g) * 10)  # masked pixels changed
    assert not torch.equal(x1, x2)
    outs, grads = [], []
    for x in (x1, x2):
        xd = x.to(DEVICE).detach().requires_grad_(True)
        with _autocast(bf16):
            y = enc(xd, visible.to(DEVICE))  # (B, C, h, w)
        y.float().sum().backward()
        outs.append(y.detach())
        grads.append(xd.grad)
    y1, y2 = outs
    if not bf16:  # (under autocast, eval-mode masked BN returns float32: fp32 scale and shift)
        assert y1.dtype == torch.float32
    assert torch.equal(y1, y2)  # bitwise: masked pixels contribute exact zeros
    _assert_zero_at_masked_cells(y1, visible)
    hidden = ~pixels.to(DEVICE).expand_as(grads[0])  # (B, 3, H, W) masked pixels
    assert torch.all(grads[0][hidden] == 0) and torch.equal(grads[0], grads[1])
    with torch.no_grad(), _autocast(bf16):  # the dense path does see the change
        assert not torch.equal(enc(x1.to(DEVICE)), enc(x2.to(DEVICE)))


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_autocast_keeps_the_mask_exact_and_the_loss_finite(channels_last: bool) -> None:
    from jepa_lightning import CNNJEPA
    from jepa_lightning.losses import normalized_smooth_l1

    torch.manual_seed(0)
    kwargs = {"backbone": "resnet18", "small_images": True, "image_size": 32}
    model = CNNJEPA(**kwargs, channels_last=channels_last).to(DEVICE).train()
    fp32 = copy.deepcopy(model)
    images = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    masks = model.sample_masks(32)
    losses = []
    for m, bf16 in ((model, True), (fp32, False)):
        with _autocast(bf16):
            out = m.forward_masked(images, masks)  # (B, C, h, w) each
            loss = normalized_smooth_l1(out.prediction, out.target, masks.target)
        assert out.context.dtype == (torch.bfloat16 if bf16 else torch.float32)
        _assert_zero_at_masked_cells(out.context, masks.context)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
        for name, p in m.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
        losses.append(float(loss.detach()))
    assert abs(losses[0] - losses[1]) <= 0.05 * abs(losses[1]), losses


@needs_cuda
@pytest.mark.parametrize(
    ("arch", "small", "size"), [("resnet18", True, 64), ("resnet50", False, 128)]
)
@pytest.mark.parametrize("bf16", [False, True])
def test_masked_forward_backward_has_no_host_sync(
    arch: str, small: bool, size: int, bf16: bool
) -> None:
    """The CNN-JEPA forward (masked context encoder, dense target encoder, predictor), its loss
    and the backward, with masks already on the device: CUDA raises on any synchronisation."""
    from jepa_lightning import CNNJEPA
    from jepa_lightning.losses import normalized_smooth_l1

    torch.manual_seed(0)
    model = CNNJEPA(backbone=arch, small_images=small, image_size=size).to(DEVICE).train()
    images = torch.randn(16, 3, size, size, device=DEVICE)
    masks = model.sample_masks(16)  # drawn on the CPU and copied before the check

    def step() -> None:
        with _autocast(bf16):
            out = model.forward_masked(images, masks)
            loss = normalized_smooth_l1(out.prediction, out.target, masks.target)
        loss.backward()

    step()  # warm-up: cuDNN/cuBLAS handles and workspaces, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def _cnn_jepa_step(model: Any, images: Tensor, masks: Any) -> dict[str, Tensor]:
    """One CNN-JEPA forward + loss + backward: loss, feature maps, gradients, statistics."""
    from jepa_lightning.losses import normalized_smooth_l1

    model.train()
    model.zero_grad(set_to_none=True)
    out = model.forward_masked(images, masks)  # (B, C, h, w) each
    loss = normalized_smooth_l1(out.prediction, out.target, masks.target)
    loss.backward()
    res = {"loss": loss, "out/context": out.context, "out/prediction": out.prediction}
    res["out/target"] = out.target
    res.update({f"grad/{n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
    res.update({f"buffer/{n}": b for n, b in model.named_buffers() if b.is_floating_point()})
    return {k: v.detach().clone() for k, v in res.items()}


def test_compiled_cnn_jepa_step_equals_eager(record_property: Record) -> None:
    """``CNNJEPA(compile=True)`` (inductor: Triton kernels on CUDA) against eager, float32."""
    from jepa_lightning import CNNJEPA

    torch.manual_seed(0)
    kwargs = {"backbone": "resnet18", "small_images": True, "image_size": 32}
    eager = CNNJEPA(**kwargs).to(DEVICE)
    compiled = CNNJEPA(**kwargs, compile=True).to(DEVICE)
    compiled.load_state_dict(eager.state_dict())
    ref64 = copy.deepcopy(eager).double()
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    masks = eager.sample_masks(16)
    got = _cnn_jepa_step(compiled, images, masks)
    ref32 = _cnn_jepa_step(eager, images, masks)
    ref = _cnn_jepa_step(ref64, images.double(), masks)
    assert got.keys() == ref32.keys() and any(k.startswith("grad/") for k in got)
    _assert_zero_at_masked_cells(got["out/context"], masks.context)
    _check_fp32("cnn_jepa_compiled", got, ref32, ref, record_property, COMPILED_TOL)


def test_compiled_cjepa_step_equals_eager(record_property: Record) -> None:
    """C-JEPA (ViT-Tiny, two views, VICReg on) with its three networks compiled in place."""
    from jepa_lightning import CJEPA

    torch.manual_seed(0)
    eager = CJEPA(
        arch="vit_tiny",
        patch_size=4,
        image_size=32,
        depth=2,
        predictor_embed_dim=96,
        predictor_depth=2,
    ).to(DEVICE)
    ref64 = copy.deepcopy(eager).double()  # same mask seed: every copy draws the same masks
    compiled = copy.deepcopy(eager)
    for module in (compiled.context_encoder, compiled.target_encoder, compiled.predictor):
        module.compile()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 2, 3, 32, 32, generator=g).to(DEVICE)  # (B, views, 3, H, W)

    def step(model: CJEPA, x: Tensor) -> dict[str, Tensor]:
        model.train()
        model.zero_grad(set_to_none=True)
        out = model.shared_step(x)
        out["loss"].backward()
        res = {"loss": out["loss"], "loss/jepa": out["jepa_loss"]}
        res.update({f"grad/{n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
        return {k: v.detach().clone() for k, v in res.items()}

    got = step(compiled, images)
    ref32 = step(eager, images)
    ref = step(ref64, images.double())
    assert got.keys() == ref32.keys() and any(k.startswith("grad/") for k in got)
    _check_fp32("cjepa_compiled", got, ref32, ref, record_property, COMPILED_TOL)


@needs_cuda
def test_cuda_graphs_masked_encoder_equals_eager(record_property: Record) -> None:
    """The masked encoder compiled with ``mode="reduce-overhead"`` (CUDA graphs), forward and
    backward in training mode, three steps: the last one (a graph replay) against eager."""
    from jepa_lightning.modules import MaskedResNet

    torch.manual_seed(0)
    eager = MaskedResNet("resnet18", small_images=True).to(DEVICE).train()
    ref64 = copy.deepcopy(eager).double()
    graphed = copy.deepcopy(eager)
    graphed.compile(mode="reduce-overhead")
    g = torch.Generator().manual_seed(0)
    visible = _visible(16, 4, g).to(DEVICE)
    x = torch.randn(16, 3, 32, 32, generator=g).to(DEVICE)
    grad_out = torch.randn(16, eager.num_features, 4, 4, generator=g).to(DEVICE)
    results = []
    for model, dtype in ((graphed, torch.float32), (eager, torch.float32), (ref64, torch.float64)):
        for _ in range(3):  # running statistics move three times in every copy
            torch.compiler.cudagraph_mark_step_begin()
            res = _encoder_step(model, x.to(dtype), visible, grad_out.to(dtype))
        results.append(res)
    with contextlib.suppress(ImportError, AttributeError, KeyError):  # did graphs run? (report)
        from torch._dynamo.utils import counters

        graphs = {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}
        record_property("cudagraph_counters", str(graphs))
    _assert_zero_at_masked_cells(results[0]["out"], visible)
    _check_fp32("cuda_graphs_encoder", *results, record_property, COMPILED_TOL)
    torch._dynamo.reset()  # free the CUDA graph pools
