"""Run ``MaskedBatchNorm2d(sync=True)`` in ``WORLD`` gloo processes on shards of one batch and
save what each rank computed: ``python sync_bn_check.py OUT WORLD``.

The batch, masks, output gradients and initial weights are drawn from fixed seeds
(:func:`make_inputs`), so the test can recompute them and normalise the concatenated batch in
one process. Shards are uneven (4 and 2 images), one image is fully masked, and two
forward/backward passes run (running statistics after two updates).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

from jepa_lightning.modules import MaskedBatchNorm2d

C, H, W = 5, 4, 4
SHARDS = [(0, 4), (4, 6)]  # rank r normalises images SHARDS[r][0]:SHARDS[r][1]
FORBIDDEN = {"nonzero", "_local_scalar_dense", "masked_select", "item", "nonzero_static"}


def make_inputs(step: int) -> dict[str, torch.Tensor]:
    """The global batch of pass ``step``: images, visibility masks, output gradients."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(6, C, H, W, generator=g) * 3 + 1
    mask = (torch.rand(6, 1, H, W, generator=g) < 0.6).float()
    mask[0] = 1.0  # rank 0 has a fully visible image ...
    mask[5] = 0.0  # ... rank 1 a fully masked one
    grad = torch.randn(6, C, H, W, generator=g)
    return {"x": x, "mask": mask, "grad": grad}


def make_bn(sync: bool) -> MaskedBatchNorm2d:
    bn = MaskedBatchNorm2d(C, momentum=0.3, sync=sync)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(C, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(C, generator=g))
    return bn


class OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops.add(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def worker(rank: int, world: int, out: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    lo, hi = SHARDS[rank]
    result: dict[str, Any] = {}
    for path in ("masked", "dense"):
        bn = make_bn(sync=True)
        for step in range(2):
            inputs = make_inputs(step)
            x = inputs["x"][lo:hi].clone().requires_grad_(True)
            mask = inputs["mask"][lo:hi] if path == "masked" else None
            recorder = OpRecorder()
            with recorder:
                y = bn(x, mask)
                (y * inputs["grad"][lo:hi]).sum().backward()
            result[f"{path}_{step}"] = {"out": y.detach(), "grad_x": x.grad}
            result[f"{path}_ops_forbidden"] = sorted(FORBIDDEN & recorder.ops)
        result[f"{path}_state"] = {k: v.clone() for k, v in bn.state_dict().items()}
        # Local parameter gradients (summed over both passes): DDP would average them.
        result[f"{path}_grad_weight"] = bn.weight.grad.clone()
        result[f"{path}_grad_bias"] = bn.bias.grad.clone()
    bn.eval()  # eval mode never communicates: uses running statistics
    result["eval_out"] = bn(make_inputs(0)["x"][lo:hi])
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    out_dir, world_size = sys.argv[1], int(sys.argv[2])
    from torch.distributed.elastic.utils.distributed import get_free_port

    mp.spawn(worker, args=(world_size, out_dir, str(get_free_port())), nprocs=world_size)
