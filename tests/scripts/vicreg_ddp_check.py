"""Run :class:`VICRegTerms` in ``WORLD`` gloo processes on shards of one batch and save what
each rank computed: ``python vicreg_ddp_check.py OUT WORLD``.

Twice: on raw embeddings, and inside :class:`CNNJEPA`'s regulariser (``shared_step`` on a shard
of images with fixed masks). The global batches come from fixed seeds (:func:`make_inputs`,
:func:`make_cnn_inputs`), so the test can recompute everything on the concatenated batch in one
process.
"""

from __future__ import annotations

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jepa_lightning import CNNJEPA
from jepa_lightning.losses import VICRegTerms
from jepa_lightning.masking import GridMasks, RandomMasking

BATCH, DIM = 8, 6
CNN_BATCH = 8


def make_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    z_a = torch.randn(BATCH, DIM, generator=g) * 0.7
    z_b = z_a + 0.3 * torch.randn(BATCH, DIM, generator=g)
    return z_a, z_b


def make_cnn_model() -> CNNJEPA:
    """CNN-JEPA with variance + covariance on, in eval mode (BatchNorm with running statistics:
    each image's features do not depend on the rest of the batch, so shards are comparable)."""
    torch.manual_seed(3)
    model = CNNJEPA(backbone="resnet18", small_images=True, image_size=32,
                    vicreg=VICRegTerms(sim_weight=0.0), vicreg_weight=0.5)  # fmt: skip
    return model.eval()


def make_cnn_inputs() -> tuple[torch.Tensor, GridMasks]:
    g = torch.Generator().manual_seed(5)
    images = torch.randn(CNN_BATCH, 3, 32, 32, generator=g)
    return images, RandomMasking(0.5)(CNN_BATCH, 4, 4, generator=g)


def cnn_shared_step(model: CNNJEPA, images: torch.Tensor, masks: GridMasks) -> dict:
    """``model.shared_step`` with the given masks (instead of the module's own draw)."""
    model.sample_masks = lambda n: masks  # type: ignore[method-assign]
    return model.shared_step(images)


def worker(rank: int, world: int, out: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        z_a, z_b = make_inputs()
        shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        a = z_a[shard].clone().requires_grad_(True)
        b = z_b[shard].clone().requires_grad_(True)
        terms = VICRegTerms(gather_distributed=True)(a, b)
        terms.loss.backward()
        local = VICRegTerms(gather_distributed=False)(z_a[shard], z_b[shard])
        # The same terms as CNN-JEPA's regulariser, on this rank's shard of images.
        model = make_cnn_model()
        images, masks = make_cnn_inputs()
        cnn = slice(rank * CNN_BATCH // world, (rank + 1) * CNN_BATCH // world)
        step = cnn_shared_step(model, images[cnn], GridMasks(masks.context[cnn], masks.target[cnn]))
        step["loss"].backward()
        torch.save(
            {
                "terms": [t.detach() for t in terms],
                "local_terms": [t.detach() for t in local],
                "grad_a": a.grad,
                "grad_b": b.grad,
                "cnn": {k: v.detach() for k, v in step.items() if v.ndim == 0},
                "cnn_grads": {n: p.grad for n, p in model.context_encoder.named_parameters()},
            },
            os.path.join(out, f"rank{rank}.pt"),
        )
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
