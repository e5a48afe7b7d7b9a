"""``benchmarks/gpu/gpu_check.sh`` without CUDA: a seconds-long CPU smoke check that exits 0.

The script's CUDA schedule itself (parts 1-4 with tiny settings on the CPU) is exercised by
``GPU_CHECK_DRYRUN=1 bash benchmarks/gpu/gpu_check.sh OUT`` (about a minute; not part of the suite).
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_skips_the_cuda_parts_and_exits_0_without_cuda(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # Hide any GPU so that this is the CPU mode even on a GPU machine.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu" / "gpu_check.sh"), str(out)],
        cwd=tmp_path,  # the script finds the repository itself
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "skipping the CUDA parts" in log and "the CUDA parts were skipped" in log, log
    assert seconds < 60, f"CPU smoke mode took {seconds:.0f} s"
    summary = {r["part"]: r for r in json.loads((out / "summary.json").read_text())}
    for part in ("1", "2a", "2b", "3-fit", "3-knn", "4"):
        assert summary[part]["status"] == "SKIP", summary[part]
    assert summary["1-smoke"]["status"] == "PASS"
    assert "skipped" in summary["1-smoke"]["key"] and "passed" not in summary["1-smoke"]["key"]
    assert summary["2-smoke"]["status"] == "PASS" and "ratios" in summary["2-smoke"]["key"]
    assert (out / "summary.md").read_text().startswith("| part")
    # What the device tool brings back: at most 8 files; every log is in the tarball.
    assert sorted(f.name for f in out.iterdir()) == [
        "gpu_check_logs.tar.gz",
        "summary.json",
        "summary.md",
    ]
    with tarfile.open(out / "gpu_check_logs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"logs/env.txt", "logs/part1_smoke.log", "logs/results.tsv"} <= names, names
