"""KNNMonitor / CollapseMonitor inside real Trainer runs: the whole split, once, on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from callback_toys import ToyData, ToyJEPA, quiet_trainer, sgd
from ddp_monitors_script import N_TRAIN, N_VAL, run

from jepa_lightning import CollapseMonitor, KNNMonitor
from jepa_lightning.callbacks._features import epoch_due
from jepa_lightning.callbacks.metrics import (
    feature_std,
    knn_accuracy,
    rankme,
    target_decomposition,
)

HERE = Path(__file__).resolve().parent


def _direct(model: ToyJEPA, data: ToyData, k: int, bank_idx: torch.Tensor | None = None):
    bank_x, bank_y = data.train.tensors
    if bank_idx is not None:
        bank_x, bank_y = bank_x[bank_idx], bank_y[bank_idx]
    val_x, val_y = data.val.tensors
    q = model.embed(val_x)
    return q, knn_accuracy(q, val_y, model.embed(bank_x), bank_y, data.num_classes, k=k)


@pytest.mark.parametrize("max_bank_size", [None, 50])
def test_monitors_equal_direct_computation(max_bank_size: int | None) -> None:
    torch.manual_seed(0)
    model = ToyJEPA(optimizer=sgd(0.0))
    data = ToyData(n_train=203, n_val=101, spread=0.6, batch_size=16)
    knn = KNNMonitor(k=20, max_bank_size=max_bank_size, bank_chunk=37, query_chunk=10)
    collapse = CollapseMonitor(decomposition_batches=3)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, callbacks=[knn, collapse])
    trainer.fit(model, datamodule=data)

    idx = None if max_bank_size is None else knn.bank_indices(203)
    q, acc = _direct(model, data, k=20, bank_idx=idx)
    assert knn.last_result["bank_size"] == (max_bank_size or 203)
    assert knn.last_result["num_queries"] == 101
    assert knn.last_result["top1"] == acc[1] and knn.last_result["top5"] == acc[5]
    assert float(trainer.callback_metrics["knn/top1"]) == pytest.approx(acc[1])
    assert 0.2 < acc[1] < 1.0  # a non-trivial number, so a wrong bank or split would show
    assert collapse.last_result["rankme"] == pytest.approx(rankme(q), rel=1e-5)
    assert collapse.last_result["feature_std"] == pytest.approx(feature_std(q), rel=1e-5)
    assert float(trainer.callback_metrics["collapse/rankme"]) == pytest.approx(rankme(q), 1e-5)
    # target shares over the first 3 validation batches (16 images each)
    shares = target_decomposition(model.target_map(data.val.tensors[0][:48]))
    for key, value in shares.items():
        assert collapse.last_result[f"target_share_{key}"] == pytest.approx(value, abs=1e-5)
        logged = float(trainer.callback_metrics[f"collapse/target_share_{key}"])
        assert logged == pytest.approx(value, abs=1e-5)
    assert 0.05 < shares["image"] < 0.95  # a non-trivial split


def test_monitors_do_not_change_training() -> None:
    def fit(callbacks: list) -> ToyJEPA:
        torch.manual_seed(0)
        model = ToyJEPA(optimizer=sgd(0.05))
        quiet_trainer(max_epochs=2, callbacks=callbacks).fit(model, datamodule=ToyData(n_train=128))
        return model

    with_monitors = fit([KNNMonitor(k=20), CollapseMonitor()])
    without = fit([])
    for (name, p), q in zip(
        with_monitors.state_dict().items(), without.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name


def test_epoch_schedule() -> None:
    trainer = quiet_trainer(max_epochs=7)
    due = []
    for epoch in range(7):
        trainer.fit_loop.epoch_progress.current.completed = epoch
        due.append(epoch_due(trainer, 3))
    assert due == [True, False, False, True, False, False, True]


def test_ddp_two_processes_equal_single_process(tmp_path: Path) -> None:
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    single.mkdir()
    ddp.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "ddp_monitors_script.py"), str(ddp), "2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run(single, 1)
    ref = json.loads((single / "rank0.json").read_text())
    ranks = [json.loads((ddp / f"rank{r}.json").read_text()) for r in (0, 1)]
    for res in ranks:
        # each rank saw the whole bank and the whole validation split exactly once
        assert res["knn"]["bank_size"] == N_TRAIN and res["knn"]["num_queries"] == N_VAL
        assert res["collapse"]["num_samples"] == N_VAL
        assert res["knn"]["top1"] == ref["knn"]["top1"]
        assert res["knn"]["top5"] == ref["knn"]["top5"]
        assert res["logged_knn_top1"] == pytest.approx(ref["knn"]["top1"])
        assert res["collapse"]["rankme"] == pytest.approx(ref["collapse"]["rankme"], rel=1e-5)
        # target shares: summed over both ranks' batches (one padded duplicate of 101 images)
        for key in ("batch_mean", "position", "image"):
            name = f"target_share_{key}"
            assert res["collapse"][name] == ranks[0]["collapse"][name]
            assert res["collapse"][name] == pytest.approx(ref["collapse"][name], abs=0.01)
    # the online probe's replicas stay identical (seeded init, averaged gradients)
    assert ranks[0]["probe_weight"] == ranks[1]["probe_weight"]
    assert ranks[0]["probe_running_mean"] == ranks[1]["probe_running_mean"]
    assert ranks[0]["probe_val_top1"] == ranks[1]["probe_val_top1"]
