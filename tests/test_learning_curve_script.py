"""Smoke test of ``benchmarks/learning_curve.py``: every phase on a tiny ImageFolder, the CSV and
plot it writes, the ``knn_top1@`` line, and that a finished method is not trained again."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(image_folder: Path, run_root: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable, str(REPO / "benchmarks/learning_curve.py"),
        "--data", str(image_folder), "--run-root", str(run_root), "--tag", "smoke",
        "--methods", "cnn_jepa", "cnn_jepa_paper:target_norm=batch", "byol",
        "--budget-min", "0.05", "--fixed-steps", "3", "--evals", "1", "--batch-size", "4",
        "--bank-size", "8", "--test-size", "6", "--calib-steps", "4", "--workers", "0",
        "--reference-byol-s", "0.62", "--ckpt-every", "2", "--threads", "2", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_learning_curve_smoke(image_folder: Path, tmp_path: Path) -> None:
    proc = _run(image_folder, tmp_path)
    root = tmp_path / "smoke"
    with (root / "curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    methods = {r["method"] for r in rows}
    assert methods == {"cnn_jepa", "cnn_jepa_paper:target_norm=batch", "byol"}
    for method in methods:
        steps = sorted(int(r["step"]) for r in rows if r["method"] == method)
        assert steps == [0, 3]  # the random init and the end of the planned schedule
    assert all(0 <= float(r["knn_top1"]) <= 100 and float(r["rankme"]) >= 1 for r in rows)
    assert (root / "curve.png").stat().st_size > 1000
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("knn_top1@0.05min: cnn_jepa=")
    for name in ("byol=", "simclr=nan", "vicreg=nan", "random=", "cnn_jepa_paper:target_norm="):
        assert name in last
    assert (root / "cnn_jepa" / "last.ckpt").exists()
    # Finished methods are skipped: a second call trains and evaluates nothing again.
    snap = root / "cnn_jepa" / "snap_000003.pt"
    mtime = snap.stat().st_mtime_ns
    again = _run(image_folder, tmp_path)
    assert "trained" not in again.stdout and "eval " not in again.stdout
    assert snap.stat().st_mtime_ns == mtime
    assert again.stdout.strip().splitlines()[-1] == last
