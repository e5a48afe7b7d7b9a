"""``CNNJEPA(compile=True)``: the compiled modules compute what the eager ones compute.

``torch.compile`` (inductor) fuses the masked BatchNorm's elementwise work; a fusion that broke
the masking (a masked position leaking into the statistics, or a non-zero written where the mask
is 0) or the hand-written backward would show here as a different loss, different gradients or
non-zero context features at masked cells. In float64, because in float32 the last stage
(normalising over a few visible positions of a 4×4 grid) amplifies rounding to ~1e-2 relative
in some gradients for any two implementations (the same effect as in ``test_minkowski.py``);
in float64 the two agree to ~1e-14. One compile of the masked encoder's forward and backward,
the dense target forward and the predictor: about a minute on 2 CPU cores.
"""

from __future__ import annotations

import pytest
import torch

from jepa_lightning import CNNJEPA
from jepa_lightning.losses import normalized_smooth_l1


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.slow
def test_compiled_step_equals_eager() -> None:
    torch.manual_seed(0)
    kwargs = {"backbone": "resnet18", "small_images": True, "image_size": 32}
    eager = CNNJEPA(**kwargs).double()
    compiled = CNNJEPA(**kwargs, compile=True).double()
    # state-dict keys unchanged by compiling in place: checkpoints and exports are shared
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    compiled.load_state_dict(eager.state_dict())
    images = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    masks = eager.sample_masks(6)
    results = []
    for model in (eager, compiled):
        model.train()
        out = model.forward_masked(images, masks)
        loss = normalized_smooth_l1(out.prediction, out.target, masks.target)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), out, grads))
    (loss_e, out_e, grads_e), (loss_c, out_c, grads_c) = results
    hidden = ~masks.context[:, None].expand_as(out_c.context)  # (B, C, h, w) masked cells
    assert torch.all(out_c.context[hidden] == 0)
    assert rel(out_c.context, out_e.context) < 1e-9
    assert rel(out_c.target, out_e.target) < 1e-9
    assert torch.allclose(loss_c, loss_e, rtol=1e-9, atol=0)
    assert grads_c.keys() == grads_e.keys() and len(grads_e) > 0
    worst = max(rel(grads_c[n], grads_e[n]) for n in grads_e)
    assert worst < 1e-9, worst
    # the running statistics of the masked BatchNorm moved the same way
    buffers_c = dict(compiled.context_encoder.named_buffers())
    for name, be in eager.context_encoder.named_buffers():
        if be.is_floating_point():
            assert torch.allclose(buffers_c[name], be, rtol=1e-9, atol=1e-12), name
