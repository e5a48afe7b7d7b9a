"""Run :class:`VICRegTerms` in ``WORLD`` gloo processes on shards of one batch and save what
each rank computed: ``python vicreg_ddp_check.py OUT WORLD``.

The global batch comes from a fixed seed (:func:`make_inputs`), so the test can recompute the
terms on the concatenated batch in one process.
"""

from __future__ import annotations

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jepa_lightning.losses import VICRegTerms

BATCH, DIM = 8, 6


def make_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    z_a = torch.randn(BATCH, DIM, generator=g) * 0.7
    z_b = z_a + 0.3 * torch.randn(BATCH, DIM, generator=g)
    return z_a, z_b


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
        torch.save(
            {
                "terms": [t.detach() for t in terms],
                "local_terms": [t.detach() for t in local],
                "grad_a": a.grad,
                "grad_b": b.grad,
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
