"""Run each regulariser (VICReg, SIGReg, VISReg) in ``WORLD`` gloo processes on shards of one
batch and save what each rank computed: ``python regularizer_ddp_check.py OUT WORLD``.

Every rank seeds its global RNG differently (the regularisers' random directions must not
depend on it). Twice: on raw ``(B, D)`` embeddings at training step :data:`STEP`, and inside
:class:`CNNJEPA`'s regulariser slot (SIGReg behind a projector, ``shared_step`` on a shard of
images with fixed masks). The global batches come from fixed seeds, so the test recomputes
everything on the concatenated batch in one process.
"""

from __future__ import annotations

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from vicreg_ddp_check import CNN_BATCH, cnn_shared_step, make_cnn_inputs

from jepa_lightning import CNNJEPA
from jepa_lightning.losses import Regularizer, SIGRegTerms, VICRegTerms, VISRegTerms
from jepa_lightning.masking import GridMasks

BATCH, DIM, STEP = 8, 6, 7


def make_regularizers() -> dict[str, Regularizer]:
    """One of each, with their invariance terms on (two branches), a few directions."""
    return {
        "vicreg": VICRegTerms(),
        "sigreg": SIGRegTerms(num_vectors=32, sim_weight=1.0, seed=5),
        "visreg": VISRegTerms(num_slices=32, sim_weight=1.0, seed=5),
    }


def make_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    z_a = torch.randn(BATCH, DIM, generator=g) * 0.7 + 0.2
    z_b = z_a + 0.3 * torch.randn(BATCH, DIM, generator=g)
    return z_a, z_b


def make_cnn_model() -> CNNJEPA:
    """CNN-JEPA with SIGReg behind a small projector, in eval mode (BatchNorm with running
    statistics: each image's features do not depend on the rest of the batch)."""
    torch.manual_seed(3)
    model = CNNJEPA(backbone="resnet18", small_images=True, image_size=32,
                    regularizer=SIGRegTerms(num_vectors=32, seed=2), regularizer_weight=0.5,
                    regularizer_projector=[16, 8])  # fmt: skip
    return model.eval()


def trainable_grads(model: CNNJEPA) -> dict[str, torch.Tensor]:
    """Gradients of the context encoder and the projector (what the regulariser trains)."""
    named = [*model.context_encoder.named_parameters(prefix="context_encoder"),
             *model.regularizer_projector.named_parameters(prefix="projector")]  # type: ignore[union-attr]  # fmt: skip
    return {n: p.grad for n, p in named}


def worker(rank: int, world: int, out: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(1000 + rank)  # a different global RNG state on every rank
        z_a, z_b = make_inputs()
        shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        record: dict = {}
        for name, reg in make_regularizers().items():
            a = z_a[shard].clone().requires_grad_(True)
            b = z_b[shard].clone().requires_grad_(True)
            terms = reg(a, b, step=STEP)
            terms.loss.backward()
            record[name] = {
                "scalars": {k: v.detach() for k, v in terms.scalars().items()},
                "grad_a": a.grad,
                "grad_b": b.grad,
            }
        local = SIGRegTerms(num_vectors=32, seed=5, gather_distributed=False)
        record["sigreg_local"] = local(z_a[shard], z_b[shard], step=STEP).statistic
        record["directions"] = SIGRegTerms(num_vectors=32, seed=5).directions(DIM, STEP)
        # The regulariser slot of CNN-JEPA on this rank's shard of images.
        model = make_cnn_model()
        images, masks = make_cnn_inputs()
        cnn = slice(rank * CNN_BATCH // world, (rank + 1) * CNN_BATCH // world)
        step = cnn_shared_step(model, images[cnn], GridMasks(masks.context[cnn], masks.target[cnn]))
        step["loss"].backward()
        record["cnn"] = {k: v.detach() for k, v in step.items() if v.ndim == 0}
        record["cnn_grads"] = trainable_grads(model)
        torch.save(record, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def main() -> None:
    out, world = sys.argv[1], int(sys.argv[2])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    mp.spawn(worker, args=(world, out, port), nprocs=world, join=True)


if __name__ == "__main__":
    main()
