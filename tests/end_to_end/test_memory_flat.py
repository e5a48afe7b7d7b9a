"""A leak guard: memory stays flat over many steps of the quickstart recipe with every monitor on.

``benchmarks/speed/memory_growth.py`` measures 500+ steps (its table is in
``benchmarks/RESULTS.md``); this runs its sampler through the real CLI over 5 short epochs (batch 8,
4 steps each; the k-NN monitor on epochs 0, 2 and 4 with a 64-image bank; checkpoints, TensorBoard,
online probe, collapse monitor and mask images on). Two checks: the number of live torch tensors at
the end of an epoch is the same in every epoch after the first — measured 703, then 713 every epoch
— so anything kept per step or per epoch shows exactly (a callback keeping one 2 MB tensor and its
graph per step moved it by +8 per epoch: 711, 729, 737, 745, 753); and resident memory stays within
a loose bound of epoch 1's (allocator noise measured up to ±50 MB; a retained autograd graph of this
model is tens of MB per step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# In a fresh process: the live-tensor count of the pytest process also holds (and slowly frees)
# what earlier tests left behind, which moved it by -50 per epoch in the full suite.
_RUN = """
import json, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from benchmarks.speed.memory_growth import run_quickstart
s = run_quickstart(json.loads(sys.argv[2]), int(sys.argv[3]), config=sys.argv[4])
print("SAMPLES " + json.dumps({"steps": s.steps, "epochs": s.epochs}))
"""

EPOCHS, STEPS_PER_EPOCH = 5, 4
RSS_BOUND_MB = 100.0  # epochs 1-4 (16 steps); allocator noise measured ±50 MB


def _config(tmp_path: Path) -> Path:
    """configs/quickstart.yaml with the k-NN bank cut to 64 images (every monitor stays on)."""
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("KNNMonitor"):
            callback.setdefault("init_args", {})["max_bank_size"] = 64
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_memory_stays_flat_over_many_steps_with_every_monitor_on(tmp_path: Path) -> None:
    extra = ["--trainer.limit_train_batches", str(STEPS_PER_EPOCH)]
    extra += ["--trainer.limit_val_batches", "2", "--data.init_args.batch_size", "8"]
    extra += ["--trainer.log_every_n_steps", "1"]
    args = [sys.executable, "-c", _RUN, str(REPO), json.dumps(extra), str(EPOCHS),
            str(_config(tmp_path))]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("SAMPLES "))
    sampler = json.loads(line.removeprefix("SAMPLES "))
    steps = [int(s["step"]) for s in sampler["steps"]]
    assert steps == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    tensors = [int(e["tensors"]) for e in sampler["epochs"]]
    rss = [e["rss_mb"] for e in sampler["epochs"]]
    print(f"live tensors at epoch ends: {tensors}; RSS (MB): {[round(r, 1) for r in rss]}")
    assert len(tensors) == EPOCHS
    # From epoch 1 on (optimiser state, logger and k-NN have been created) nothing accumulates,
    # in epochs with the k-NN monitor (0, 2, 4) or without.
    assert len(set(tensors[1:])) == 1, tensors
    assert max(rss[1:]) - rss[1] < RSS_BOUND_MB, rss
