"""Helpers of ``benchmarks/gpu/gpu_check.sh``: the summary table and the CIFAR-10 run's facts.

    python benchmarks/gpu/gpu_check_summary.py table OUT       # prints it; OUT/summary.{md,json}
    python benchmarks/gpu/gpu_check_summary.py run-info RUN OUT  # ckpt + TensorBoard -> OUT/part3_*

``table`` reads ``OUT/results.tsv`` (one line per part: id, status, seconds, note, written by
the shell script) and pulls each part's key number out of its log. Only the standard library
is used there; ``run-info`` imports torch (checkpoint) and tensorboard (event files).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from pathlib import Path
from typing import Any

#: Row order of the table and what each part id is.
PARTS: dict[str, str] = {
    "0": "environment",
    "1": "CUDA correctness (pytest -m gpu)",
    "1-smoke": "CPU smoke: gpu tests collected and skipped",
    "2a": "throughput eager (R50 224px bf16 b128)",
    "2w": "throughput compile warm-up (cold compile)",
    "2b": "throughput compiled (CNN-JEPA compiled)",
    "2-smoke": "CPU smoke: throughput.py tiny",
    "3-data": "CIFAR-10 data",
    "3-fit": "CIFAR-10 CNN-JEPA R18 fit (bf16)",
    "3-knn": "k-NN: trained vs random encoder",
    "4": "DDP 2 processes (NCCL)",
}

_PYTEST_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")
_PYTEST_RESULT = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)")
_TP_ROW = re.compile(r"^\|\s*(\w+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+|-)\s*\|")
_KNN_TOP1 = re.compile(r"knn/top1[\s│┃|]+([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)")


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def pytest_counts(log: str) -> str:
    """``"23 passed, 2 skipped"`` from pytest's last summary line, or counted from ``-v`` lines
    when the run was cut short."""
    for line in reversed(log.splitlines()):
        if " in " in line and _PYTEST_COUNTS.search(line):
            return ", ".join(f"{n} {w}" for n, w in _PYTEST_COUNTS.findall(line))
    seen: dict[str, int] = {}
    for line in log.splitlines():
        m = _PYTEST_RESULT.match(line)
        if m:
            seen[m.group(2).lower()] = seen.get(m.group(2).lower(), 0) + 1
    return ", ".join(f"{n} {w}" for w, n in seen.items()) + " (incomplete)" if seen else ""


def failed_tests(log: str) -> list[str]:
    """Names of the tests that failed or errored (from ``-v`` lines)."""
    out = []
    for line in log.splitlines():
        m = _PYTEST_RESULT.match(line)
        if m and m.group(2) in ("FAILED", "ERROR"):
            out.append(m.group(1))
    return out


def throughput(log: str) -> dict[str, Any]:
    """Rows ``{name: (s/step, img/s, peak GiB | None)}`` and the ``ratios:`` line."""
    rows: dict[str, tuple[float, float, float | None]] = {}
    ratios = ""
    for line in log.splitlines():
        m = _TP_ROW.match(line)
        if m:
            peak = None if m.group(4) == "-" else float(m.group(4))
            rows[m.group(1)] = (float(m.group(2)), float(m.group(3)), peak)
        if line.startswith("ratios:"):
            ratios = line.removeprefix("ratios:").strip()
    return {"rows": rows, "ratios": ratios}


def throughput_key(log: str) -> str:
    tp = throughput(log)
    rows = tp["rows"]
    if "cnn_jepa" not in rows:
        return ""
    _, ips, peak = rows["cnn_jepa"]
    parts = [f"CNN-JEPA {ips:.0f} img/s"]
    if peak is not None:
        parts[0] += f" (peak {peak:.1f} GiB)"
    base = [f"{n} {rows[n][1]:.0f}" for n in ("byol", "simclr", "vicreg") if n in rows]
    if base:
        parts.append(", ".join(base))
    if tp["ratios"]:
        parts.append(f"ratios {tp['ratios']}")
    return "; ".join(parts)


def knn_top1(log: str) -> float | None:
    """The ``knn/top1`` of a ``jepa-lightning validate`` run (last one printed)."""
    found = _KNN_TOP1.findall(log)
    return float(found[-1]) if found else None


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{100 * x:.1f} %"


def gpu_util(path: Path) -> str:
    """Mean GPU utilisation and peak memory from ``nvidia-smi --query-gpu ... --format=csv``."""
    util, mem = [], []
    for row in csv.reader(_read(path).splitlines()):
        try:
            util.append(float(row[1]))
            mem.append(float(row[2]))
        except (IndexError, ValueError):
            continue
    if not util:
        return ""
    return f"GPU util mean {statistics.mean(util):.0f} %, mem max {max(mem) / 1024:.1f} GiB"


def ddp_key(path: Path) -> str:
    """Steps and the k-NN monitor's top-1 from the DDP run's ``metrics.csv``."""
    rows = list(csv.DictReader(_read(path).splitlines()))
    if not rows:
        return ""
    steps = max((int(float(r["step"])) for r in rows if r.get("step")), default=0)
    top1 = [float(r["knn/top1"]) for r in rows if r.get("knn/top1")]
    return f"{steps + 1} steps; knn/top1 {_pct(top1[-1]) if top1 else 'not logged'}"


def key_number(part: str, out: Path, seconds: str) -> str:
    """The one number (or few) that matters for each part."""
    if part in ("1", "1-smoke"):
        return pytest_counts(_read(out / ("part1_tests.log" if part == "1" else "part1_smoke.log")))
    if part in ("2a", "2b", "2-smoke"):
        name = {"2a": "part2_eager.log", "2b": "part2_compiled.log", "2-smoke": "part2_smoke.log"}
        return throughput_key(_read(out / name[part]))
    if part == "2w":
        if "ratios:" not in _read(out / "part2_compile_warmup.log"):
            return f"not done in {seconds} s: part 2b compiles the rest (informational)"
        return f"cold compile of CNN-JEPA R50 + 1 round of steps: {seconds} s"
    if part == "3-fit":
        info = json.loads(_read(out / "part3_run.json") or "{}")
        bits = []
        if info:
            epochs, steps = info.get("epochs", "?"), info.get("steps", "?")
            bits.append(f"{epochs} epochs (the last may be partial), {steps} steps")
            if info.get("images_per_s"):
                bits.append(f"{info['images_per_s']:.0f} img/s (whole fit)")
            if info.get("knn_monitor_top1") is not None:
                bits.append(f"last knn monitor {_pct(info['knn_monitor_top1'])}")
        util = gpu_util(out / "part3_gpu_util.csv")
        return "; ".join([*bits, util] if util else bits)
    if part == "3-knn":
        trained = knn_top1(_read(out / "part3_knn_ckpt.log"))
        rand = knn_top1(_read(out / "part3_knn_random.log"))
        delta = "" if trained is None or rand is None else f" ({100 * (trained - rand):+.1f})"
        return f"top1 trained {_pct(trained)} vs random {_pct(rand)}{delta}"
    if part == "4":
        return ddp_key(out / "part4_metrics.csv")
    return ""


def junit_properties(path: Path) -> list[str]:
    """The values the CUDA tests recorded (``record_property``), one line per test."""
    if not path.is_file():
        return []
    import xml.etree.ElementTree as ET

    lines = []
    for case in ET.parse(path).iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        if props:
            text = ", ".join(f"{k}={v}" for k, v in props.items())
            lines.append(f"{case.get('name')}: {text}")
    return lines


def table(out: Path) -> int:
    """Print and write the summary; return 1 if any part failed or timed out."""
    rows = []
    for line in _read(out / "results.tsv").splitlines():
        fields = [*line.split("\t"), "", "", "", ""][:4]
        if fields[0]:
            rows.append(fields)
    order = list(PARTS)
    rows.sort(key=lambda r: order.index(r[0]) if r[0] in order else len(order))
    records = []
    for part, status, seconds, note in rows:
        try:
            key = "" if status == "SKIP" else key_number(part, out, seconds)
        except (ValueError, KeyError, OSError) as err:  # a log we could not read: say so
            key = f"(unreadable: {err})"
        records.append(
            {
                "part": part,
                "what": PARTS.get(part, ""),
                "status": status,
                "seconds": int(seconds) if seconds.isdigit() else seconds,
                "key": key or note,
                "note": note,
            }
        )
    header = f"| {'part':<7} | {'what':<44} | {'status':<7} | {'s':>4} | key number"
    lines = [header, f"|{'-' * 9}|{'-' * 46}|{'-' * 9}|{'-' * 6}|{'-' * 40}"]
    for r in records:
        lines.append(
            f"| {r['part']:<7} | {r['what'][:44]:<44} | {r['status']:<7} | {r['seconds']!s:>4} "
            f"| {r['key']}"
        )
    failed = failed_tests(_read(out / "part1_tests.log"))
    if failed:
        lines.append("")
        lines.append("failed tests: " + ", ".join(failed))
    measured = junit_properties(out / "part1_junit.xml")
    if measured:
        lines.append("")
        lines.append("part 1 measurements (err: relative distance to the reference implementation;")
        lines.append("fp32_noise: the float32 reference's own distance from float64):")
        lines += [f"  {line}" for line in measured]
    text = "\n".join(lines)
    print(text)
    (out / "summary.md").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps(records, indent=2) + "\n")
    # The compile warm-up only fills the cache for part 2b; running out of time there is no failure.
    bad = [r for r in records if r["status"] in ("FAIL", "TIMEOUT")]
    return 1 if any(not (r["part"] == "2w" and r["status"] == "TIMEOUT") for r in bad) else 0


def run_info(run: Path, out: Path, batch_size: int, seconds: float) -> None:
    """Epochs, steps, images/s and monitor metrics of the fit in ``run`` (a Lightning log dir,
    ``seconds`` its wall time) -> ``OUT/part3_run.json``; every scalar -> ``part3_scalars.csv``."""
    info: dict[str, Any] = {"run": str(run), "fit_seconds": seconds}
    ckpts = sorted(run.glob("checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = run / "checkpoints" / "last.ckpt"
    ckpt = last if last.is_file() else (ckpts[-1] if ckpts else None)
    if ckpt is not None:
        import torch

        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        epoch, steps = state.get("epoch"), state.get("global_step")  # epoch: 0-based index
        info.update(ckpt=str(ckpt), epochs=None if epoch is None else epoch + 1, steps=steps)
        if info["steps"] and seconds > 0:
            info["images_per_s"] = info["steps"] * batch_size / seconds
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        scalars: list[tuple[str, int, float]] = []
        for events in sorted(run.glob("events.out.tfevents.*")):
            acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
            acc.Reload()
            for tag in acc.Tags()["scalars"]:
                scalars += [(tag, e.step, e.value) for e in acc.Scalars(tag)]
        with (out / "part3_scalars.csv").open("w", newline="") as f:
            csv.writer(f).writerows([("tag", "step", "value"), *scalars])
        knn = [v for tag, _, v in scalars if tag == "knn/top1"]
        info["knn_monitor_top1"] = knn[-1] if knn else None
        epochs = [v for tag, _, v in scalars if tag == "epoch"]
        if info.get("epochs") is None and epochs:
            info["epochs"] = int(max(epochs)) + 1
    except ImportError:
        info["scalars"] = "tensorboard not installed"
    (out / "part3_run.json").write_text(json.dumps(info, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="print the summary table of OUT")
    t.add_argument("out", type=Path)
    r = sub.add_parser("run-info", help="facts of the CIFAR-10 run")
    r.add_argument("run", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--seconds", type=float, default=0.0, help="wall time of the fit")
    args = ap.parse_args()
    if args.cmd == "table":
        raise SystemExit(table(args.out))
    run_info(args.run, args.out, args.batch_size, args.seconds)


if __name__ == "__main__":
    main()
