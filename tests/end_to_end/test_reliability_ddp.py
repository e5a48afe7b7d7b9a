"""Real multi-process runs on CPU (gloo): synced masked BatchNorm and a 2-process DDP fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from jepa_lightning import CNNJEPA, DigitsDataModule
from jepa_lightning.masking import MixedMasking
from jepa_lightning.modules import MaskedBatchNorm2d, MaskedResNet
from jepa_lightning.seeding import MASKS, derive_seed

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from sync_bn_check import SHARDS, make_bn, make_inputs  # noqa: E402


def _run(args: list[str], timeout: int = 240) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_synced_masked_bn_equals_one_process_on_the_global_batch(tmp_path: Path) -> None:
    _run([str(SCRIPTS / "sync_bn_check.py"), str(tmp_path), "2"])
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for path in ("masked", "dense"):
        ref = make_bn(sync=False)
        for step in range(2):
            inputs = make_inputs(step)
            x = inputs["x"].clone().requires_grad_(True)
            mask = inputs["mask"] if path == "masked" else None
            y = ref(x, mask)
            (y * inputs["grad"]).sum().backward()
            if path == "dense":  # the unsynced dense path is plain F.batch_norm
                _close(y, F.batch_norm(inputs["x"], None, None, ref.weight, ref.bias, True))
            got = [r[f"{path}_{step}"] for r in ranks]
            _close(torch.cat([g["out"] for g in got]), y)
            _close(torch.cat([g["grad_x"] for g in got]), x.grad)
        for r in ranks:  # every rank holds the global running statistics
            for key, value in ref.state_dict().items():
                _close(r[f"{path}_state"][key], value)
            assert r[f"{path}_ops_forbidden"] == []  # no host sync in the synced path
        # Per-rank parameter gradients add up to the global batch's (DDP then averages them).
        _close(sum(r[f"{path}_grad_weight"] for r in ranks), ref.weight.grad)
        _close(sum(r[f"{path}_grad_bias"] for r in ranks), ref.bias.grad)
    ref.eval()
    lo, hi = SHARDS[1]
    _close(ranks[1]["eval_out"], ref(make_inputs(0)["x"][lo:hi]))


def _records(out: Path, tag: str, rank: int) -> list[dict[str, Any]]:
    lines = (out / f"records_{tag}_rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_ddp_fit_two_processes(tmp_path: Path) -> None:
    """2 CPU processes, batch 4 each, sync_batchnorm on the masked BN, probe and k-NN on."""
    _run(
        [
            str(SCRIPTS / "tiny_fit.py"), str(tmp_path), "--tag", "ddp", "--devices", "2",
            "--sync-bn", "--monitors", "--dump-step0", "--limit-train-batches", "3",
            "--limit-val-batches", "2", "--ckpt-every", "3",
        ]
    )  # fmt: skip
    recs = [_records(tmp_path, "ddp", r) for r in range(2)]
    finals = [json.loads((tmp_path / f"final_ddp_rank{r}.json").read_text()) for r in range(2)]
    assert [len(r) for r in recs] == [3, 3]
    assert finals[0]["global_step"] == finals[1]["global_step"] == 3
    # sync_batchnorm reached every masked BN layer (context and target encoder).
    assert finals[0]["synced"] and all(finals[0]["synced"])
    # Every parameter and buffer (BN running statistics, EMA target) is identical on both ranks.
    assert finals[0]["digest"] == finals[1]["digest"]

    # Data: the two shards of global batch t are exactly batch t of one process with batch 8.
    single = DigitsDataModule(image_size=32, batch_size=8, seed=0)
    single.setup()
    for t, (images, labels) in zip(range(3), single.train_dataloader(), strict=False):
        both = sorted(recs[0][t]["images"] + recs[1][t]["images"])
        assert both == sorted(images.double().flatten(1).sum(1).tolist())
        assert sorted(recs[0][t]["labels"] + recs[1][t]["labels"]) == sorted(labels.tolist())

    # Masks differ per rank and are reproducible: seeded by (mask_seed, rank, epoch, batch).
    for rank in range(2):
        for t, rec in enumerate(recs[rank]):
            g = torch.Generator().manual_seed(derive_seed(MASKS, 0, rank, 0, t))
            expected = MixedMasking()(4, 4, 4, generator=g).target.flatten(1).int()
            assert rec["mask_target"] == expected.tolist()
    assert recs[0][0]["mask_target"] != recs[1][0]["mask_target"]

    # Synced masked BN: the context encoder's step-0 output on each rank's shard equals one
    # process running the same encoder on the concatenated global batch.
    dumps = [torch.load(tmp_path / f"step0_rank{r}.pt") for r in range(2)]
    encoder = MaskedResNet("resnet18", small_images=True)
    encoder.load_state_dict(torch.load(tmp_path / "init_context.pt"))
    with torch.no_grad():
        ref = encoder.train()(
            torch.cat([d["images"] for d in dumps]), torch.cat([d["mask"] for d in dumps])
        )
    torch.testing.assert_close(torch.cat([d["output"] for d in dumps]), ref, rtol=1e-3, atol=1e-4)

    # The DDP checkpoint loads and runs in one process.
    model = CNNJEPA.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", map_location="cpu")
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3
    assert any(key.startswith("OnlineLinearProbe") for key in checkpoint["callbacks"])
    out = model.shared_step(torch.randn(2, 3, 32, 32))
    assert out["loss"].isfinite()
    assert model.embed(torch.randn(2, 3, 32, 32)).shape == (2, 512)


@pytest.mark.parametrize("sync_batchnorm", [True, False])
def test_sync_batchnorm_switches_every_masked_bn_layer(sync_batchnorm: bool) -> None:
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", sync_batchnorm=sync_batchnorm, logger=False
    )
    model = CNNJEPA(backbone="resnet18", small_images=True, image_size=32)
    model.trainer = trainer
    model.setup("fit")
    layers = [m for m in model.modules() if isinstance(m, MaskedBatchNorm2d)]
    assert len(layers) == 40  # 20 in the context encoder, 20 in the target encoder
    assert all(m.sync is sync_batchnorm for m in layers)
