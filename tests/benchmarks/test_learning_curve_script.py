"""Smoke test of ``benchmarks/curves/learning_curve.py``: every phase on a tiny ImageFolder, the
CSV and plot it writes, the ``knn_top1@`` lines, that a finished method is not trained again, and
that committed plans and results carry a comparison to a fresh machine (nothing timed or
trained)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


METHODS = ["cnn_jepa", "cnn_jepa_paper:target_norm=batch", "byol", "ijepa", "cjepa:depth=2",
           "lejepa_vit:depth=2"]  # fmt: skip


def _run(image_folder: Path, run_root: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable, "-m", "benchmarks.curves.learning_curve",
        "--data", str(image_folder), "--run-root", str(run_root), "--tag", "smoke",
        "--methods", *METHODS,
        "--budget-min", "0.05", "--fixed-steps", "3", "--evals", "1", "--batch-size", "4",
        "--bank-size", "8", "--sel-size", "4", "--test-size", "6", "--calib-steps", "4",
        "--workers", "0",
        "--reference-byol-s", "0.62", "--ckpt-every", "2", "--threads", "2", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_learning_curve_smoke(image_folder: Path, tmp_path: Path) -> None:
    kept = ("--plans", str(tmp_path / "plans"), "--csv", str(tmp_path / "results/curve.csv"))
    proc = _run(image_folder, tmp_path / "machine1", *kept)
    root = tmp_path / "machine1/smoke"
    with (tmp_path / "results/curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    methods = {r["method"] for r in rows}
    assert methods == set(METHODS)
    for method in methods:
        steps = sorted(int(r["step"]) for r in rows if r["method"] == method)
        assert steps == [0, 3]  # the random init and the end of the planned schedule
    assert all(0 <= float(r["knn_top1"]) <= 100 and float(r["rankme"]) >= 1 for r in rows)
    for r in rows:  # both encoders of the EMA methods, one of the others; planned and measured
        ema = not r["method"].startswith("lejepa")
        assert bool(r["knn_test_target"]) == ema and bool(r["knn_sel_target"]) == ema
        assert r["knn_top1"] == r[f"knn_test_{r['encoder']}"]
        assert float(r["minutes_measured"]) >= 0 and float(r["minutes_planned"]) >= 0
        assert (float(r["minutes_measured"]) > 0) == (int(r["step"]) > 0)
    assert (tmp_path / "results/curve.png").stat().st_size > 1000
    vit_line, last = proc.stdout.strip().splitlines()[-2:]
    assert last.startswith("knn_top1@0.05min: cnn_jepa=")
    for name in ("byol=", "simclr=nan", "vicreg=nan", "lejepa=nan", "random=",
                 "cnn_jepa_paper:target_norm="):  # fmt: skip
        assert name in last
    assert "ijepa" not in last and vit_line.startswith("vit_knn_top1@0.05min: cjepa=nan ijepa=")
    assert "cjepa:depth=2=" in vit_line and "random=" in vit_line and "lejepa=nan" in vit_line
    assert any(line.startswith("sel_knn_top1@0.05min: ") for line in proc.stdout.splitlines())
    assert sorted(p.stem for p in (tmp_path / "plans").glob("*.json")) == sorted(
        m.replace(":", "__").replace("=", "-") for m in METHODS
    )
    assert (root / "cnn_jepa" / "last.ckpt").exists()
    _check_online_vs_target(image_folder, root)
    # Finished methods are skipped: a second call trains and evaluates nothing again.
    snap = root / "cnn_jepa" / "snap_000003.pt"
    mtime = snap.stat().st_mtime_ns
    again = _run(image_folder, tmp_path / "machine1", *kept)
    assert "trained" not in again.stdout and "eval " not in again.stdout
    assert snap.stat().st_mtime_ns == mtime
    assert again.stdout.strip().splitlines()[-1] == last
    # A fresh machine with the committed plans and CSV: nothing is timed, trained or evaluated.
    fresh = _run(image_folder, tmp_path / "machine2", *kept, "--reference-byol-s", "0")
    assert "plan " not in fresh.stdout and "reference BYOL" not in fresh.stdout
    assert "trained" not in fresh.stdout and "eval " not in fresh.stdout
    assert fresh.stdout.strip().splitlines()[-1] == last


def _check_online_vs_target(image_folder: Path, root: Path) -> None:
    """``benchmarks/curves/online_vs_target.py`` on the runs' checkpoints: a ResNet (CNN-JEPA)
    gets three rows (target, online, online with BatchNorm recomputed), a ViT (I-JEPA) two."""
    args = [
        sys.executable, "-m", "benchmarks.curves.online_vs_target",
        str(root / "cnn_jepa/last.ckpt"), str(root / "ijepa/last.ckpt"),
        "--data", str(image_folder), "--bank-size", "8", "--sel-size", "4", "--test-size", "6",
        "--workers", "0",
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if "last.ckpt" in line]
    by_run: dict[str, list[str]] = {}
    for ckpt, _, encoder, sel, knn, rankme in rows:
        assert 0 <= float(knn) <= 100 and 0 <= float(sel) <= 100 and float(rankme) >= 1
        by_run.setdefault(Path(ckpt.strip()).parent.name, []).append(encoder.strip())
    assert by_run == {
        "cnn_jepa": ["EMA target", "online (context)", "online, BN recalibrated"],
        "ijepa": ["EMA target", "online (context)"],
    }
