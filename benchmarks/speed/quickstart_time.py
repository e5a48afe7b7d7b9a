"""Wall time of the README's quickstart, scaled to the machine of ``benchmarks/RESULTS.md``.

Times ``throughput.py``'s CNN-JEPA step here (the machine's speed), then runs the README's
``jepa-lightning fit --config configs/quickstart.yaml`` exactly as a user would (a fresh working
folder, every monitor and the closing summary on) ``--repeats`` times, and prints one row per
run: the wall time from process start to exit, and that time scaled to the reference machine
(where ``throughput.py`` times a CNN-JEPA step at 0.36 s): ``wall × 0.36 / step here``. Run it
on a quiet machine: nothing else on the cores.

    python -m benchmarks.speed.quickstart_time                 # 2 runs
    python -m benchmarks.speed.quickstart_time --repeats 1 -- --trainer.max_epochs 12
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REF_CNN_JEPA_STEP_S = 0.36  # throughput.py's CNN-JEPA step on the RESULTS.md machine


def cnn_jepa_step_s() -> float:
    """``throughput.py``'s CNN-JEPA step here (its default settings), in seconds."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed.throughput"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"^\|\s*cnn_jepa\s*\|\s*([0-9.]+)", out, flags=re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no cnn_jepa row in throughput.py's output:\n{out}")
    return float(match.group(1))


def timed_quickstart(extra: list[str]) -> tuple[float, str]:
    """Wall seconds of one quickstart ``fit`` in a fresh folder, and its closing summary."""
    cli = shutil.which("jepa-lightning")
    if cli is None:
        raise RuntimeError("jepa-lightning is not on PATH: pip install -e . first")
    with tempfile.TemporaryDirectory(prefix="quickstart_") as work:
        t0 = time.perf_counter()
        run = subprocess.run(
            [cli, "fit", "--config", str(REPO / "configs" / "quickstart.yaml"), *extra],
            cwd=work, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - t0
    if run.returncode:
        raise RuntimeError(f"the quickstart failed:\n{run.stderr[-3000:]}")
    text = run.stdout
    start = text.find("== jepa-lightning: fit finished")
    summary = text[start:] if start >= 0 else ""
    return wall, summary or text[-2000:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("extra", nargs="*", help="further CLI arguments for the quickstart (after --)")
    args = ap.parse_args()
    step = cnn_jepa_step_s()
    print(f"throughput.py CNN-JEPA step here: {step:.3f} s (reference machine: 0.36 s)")
    rows = []
    for i in range(args.repeats):
        wall, summary = timed_quickstart(args.extra)
        rows.append((i + 1, wall, wall * REF_CNN_JEPA_STEP_S / step))
        if i == 0:
            print(summary)
    print("| run | wall here (min) | scaled to the 0.36 s machine (min) |")
    print("|---|---|---|")
    for i, wall, scaled in rows:
        print(f"| {i} | {wall / 60:.2f} | {scaled / 60:.2f} |")
    print(f"quickstart_min: here={max(r[1] for r in rows) / 60:.2f} step_s={step:.3f}")


if __name__ == "__main__":
    main()
