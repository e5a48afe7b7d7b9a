"""Each regulariser under real 2-process DDP (gloo, CPU): loss and gradient on a split global
batch equal one process's on the whole batch, and SIGReg's directions are the same on every
rank whatever each rank's global RNG holds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from regularizer_ddp_check import (  # noqa: E402
    BATCH,
    DIM,
    STEP,
    make_cnn_model,
    make_inputs,
    make_regularizers,
    trainable_grads,
)
from vicreg_ddp_check import cnn_shared_step, make_cnn_inputs  # noqa: E402

from jepa_lightning.losses import SIGRegTerms  # noqa: E402

WORLD = 2
#: The terms computed on the global batch (the rest, the invariance, is per sample).
GLOBAL_TERMS = {
    "vicreg": ("vic_variance", "vic_covariance"),
    "sigreg": ("sigreg_statistic",),
    "visreg": ("vis_scale", "vis_shape", "vis_center"),
}
LOSS = {"vicreg": "vicreg_loss", "sigreg": "sigreg_loss", "visreg": "visreg_loss"}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """What each of the 2 gloo processes computed (one run for every test here)."""
    out = tmp_path_factory.mktemp("regularizer_ddp")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "regularizer_ddp_check.py"), str(out), str(WORLD)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", ["vicreg", "sigreg", "visreg"])
def test_regulariser_on_a_split_batch_equals_one_process(name: str, ranks: list[dict]) -> None:
    z_a, z_b = make_inputs()
    a, b = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
    ref = make_regularizers()[name](a, b, step=STEP)  # one process, the whole batch
    ref.loss.backward()
    expected = ref.scalars()
    for r in ranks:  # the global-batch terms: on every rank those of the whole batch
        for key in GLOBAL_TERMS[name]:
            torch.testing.assert_close(r[name]["scalars"][key], expected[key], msg=key)
    # The loss DDP optimises (the ranks' mean; the invariance is per shard) is the one-process
    # loss.
    mean_loss = sum(r[name]["scalars"][LOSS[name]] for r in ranks) / WORLD
    torch.testing.assert_close(mean_loss, expected[LOSS[name]])
    # Each rank's gradient is WORLD x the one-process gradient of its shard: DDP's average over
    # ranks turns it into exactly that (a non-autograd all-reduce, lightly #1920, would leave it
    # 1/WORLD too small).
    half = BATCH // WORLD
    for rank, r in enumerate(ranks):
        shard = slice(rank * half, (rank + 1) * half)
        for key, full in (("grad_a", a.grad), ("grad_b", b.grad)):
            assert r[name][key].abs().sum() > 0
            torch.testing.assert_close(r[name][key] / WORLD, full[shard], msg=key)  # type: ignore[index]


def test_sigreg_directions_are_the_same_on_every_rank(ranks: list[dict]) -> None:
    """Each rank's global RNG was seeded differently; the directions at a step do not care."""
    directions = SIGRegTerms(num_vectors=32, seed=5).directions(DIM, STEP)  # one process
    for r in ranks:
        assert torch.equal(r["directions"], directions)
    # (and the shards differ: a per-process statistic is not the global one)
    for r in ranks:
        global_statistic = r["sigreg"]["scalars"]["sigreg_statistic"]
        assert not torch.allclose(r["sigreg_local"], global_statistic)


def test_cnn_jepa_slot_with_a_projector_equals_one_process(ranks: list[dict]) -> None:
    """SIGReg behind a projector on CNN-JEPA's pooled context, on each rank's shard of images."""
    model = make_cnn_model()
    images, masks = make_cnn_inputs()
    single = cnn_shared_step(model, images, masks)
    single["loss"].backward()
    for r in ranks:
        torch.testing.assert_close(r["cnn"]["sigreg_statistic"], single["sigreg_statistic"])
    mean_loss = sum(r["cnn"]["loss"] for r in ranks) / WORLD  # JEPA part: per-image mean
    torch.testing.assert_close(mean_loss, single["loss"])
    for key, grad in trainable_grads(model).items():
        averaged = sum(r["cnn_grads"][key] for r in ranks) / WORLD  # what DDP applies
        torch.testing.assert_close(averaged, grad, rtol=1e-4, atol=1e-6, msg=key)
