"""Run the monitors on the toy module under ``devices`` CPU processes and dump what each rank
computed as JSON. Usage: ``python ddp_monitors_script.py OUT_DIR DEVICES``.

Run as a script because Lightning's ``strategy="ddp"`` re-launches ``sys.argv`` for ranks > 0.
The SSL learning rate is 0, so the module's weights (hence features) are those of the seeded
init in every run and any difference in the metrics comes from the monitors' gathering.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from callback_toys import ToyData, ToyJEPA, quiet_trainer, sgd

from jepa_lightning import CollapseMonitor, KNNMonitor, OnlineLinearProbe

# Bank of 203 and 101 validation samples: neither divides by 2 processes x batch 8, so the
# DistributedSampler pads the validation split and the bank shards are uneven.
N_TRAIN, N_VAL = 203, 101


def run(out: Path, devices: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ToyJEPA(optimizer=sgd(0.0))
    data = ToyData(n_train=N_TRAIN, n_val=N_VAL, spread=0.6, batch_size=8)
    knn = KNNMonitor(k=20)
    collapse = CollapseMonitor(decomposition_batches=100)  # the whole split
    probe = OnlineLinearProbe(lr=0.05)
    trainer = quiet_trainer(
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=1,
        limit_train_batches=3,
        num_sanity_val_steps=0,
        callbacks=[knn, collapse, probe],
    )
    trainer.fit(model, datamodule=data)
    result = {
        "knn": knn.last_result,
        "collapse": collapse.last_result,
        "probe_weight": probe.probe.linear.weight.tolist(),
        "probe_running_mean": probe.probe.running_mean.tolist(),
        "probe_val_top1": float(trainer.callback_metrics["probe/val_top1"]),
        "logged_knn_top1": float(trainer.callback_metrics["knn/top1"]),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]))
