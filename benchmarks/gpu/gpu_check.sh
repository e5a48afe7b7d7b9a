#!/usr/bin/env bash
# First contact with a GPU in one command, under 8 minutes: CUDA correctness tests, throughput
# (eager and compiled), a short real CIFAR-10 run with k-NN against a random encoder, and DDP.
# How to call it through the device tool, what each part costs and how to read the output:
# benchmarks/gpu/GPU.md.
#
#   bash benchmarks/gpu/gpu_check.sh OUT [DATA]
#
# OUT   folder for the results (created): summary.md, summary.json and gpu_check_logs.tar.gz
#       (every log, measurement and small artefact; GPU_CHECK_KEEP_LOGS=1 also keeps OUT/logs/).
# DATA  CIFAR-10 as an ImageFolder tree (a folder with train/ and test/), a folder holding
#       cifar10_jpg/, or the cifar10-jpg.tar.gz. Default: $CIFAR10_ROOT, else the tar in
#       ../shared/datasets/, ./shared/datasets/ or ./data/, extracted under $GPU_CHECK_WORK.
#
# Without CUDA it says that it skips the CUDA parts, runs a CPU smoke check in seconds and exits
# 0. Exit status: 0 when no part failed or timed out, 1 otherwise, 2 on bad usage.
# Python: $PYTHON, else python3. If the package or its dependencies do not import, it runs the
# package from src/ and installs the wheels of .whl/ (benchmarks/gpu/gpu_prepare.sh), no index.
#
# Optional environment:
#   GPU_CHECK_MAX_S     hard wall-time limit of the script in seconds (480); no part runs past it
#   GPU_CHECK_BUDGET_S  planned wall time (MAX_S - 30); part 3 trains for what the plan leaves
#   GPU_CHECK_TRAIN_S   longest CIFAR-10 training window in seconds (240)
#   GPU_CHECK_EPOCHS    max_epochs of that run (40); it stops at whichever limit comes first
#   GPU_CHECK_WORK      scratch folder for data, runs and checkpoints (/tmp/jepa_gpu_check)
#   GPU_CHECK_DRYRUN=1  without CUDA: run every part's plumbing on the CPU with tiny settings
set -uo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
  sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
DATA_ARG=${2:-${CIFAR10_ROOT:-}}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 2

START=$(date +%s)
MAX_S=${GPU_CHECK_MAX_S:-480}
BUDGET_S=${GPU_CHECK_BUDGET_S:-$((MAX_S - 30))}
TRAIN_MAX=${GPU_CHECK_TRAIN_S:-240}
EPOCHS=${GPU_CHECK_EPOCHS:-40}
WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/jepa_gpu_check}
DRYRUN=${GPU_CHECK_DRYRUN:-0}
PY=${PYTHON:-python3}
HARD_END=$((START + MAX_S))
PLAN_END=$((START + BUDGET_S))
# Planned seconds of what follows part 3's training (its window is what is left before them).
KNN_RESERVE=60 EAGER_RESERVE=45 COMPILED_RESERVE=70 DDP_RESERVE=120 FIT_OVERHEAD=50
LOGS=$OUT/logs  # packed into OUT/gpu_check_logs.tar.gz at the end (the device tool brings back
RESULTS=$LOGS/results.tsv  # at most 8 files)
rm -rf "$LOGS" "$OUT/gpu_check_logs.tar.gz" "$OUT"/summary.{md,json}
mkdir -p "$LOGS" || exit 2
: >"$RESULTS"
export PYTHONUNBUFFERED=1
unset JEPA_GPU_TESTS_DEVICE  # part 1 tests the CUDA device (the CPU mode checks the tests only)

now() { date +%s; }
say() { printf '[gpu_check %4ss] %s\n' "$(($(now) - START))" "$*"; }
record() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }  # id status seconds note
verdict() { case $1 in 0) echo PASS ;; 124 | 137) echo TIMEOUT ;; *) echo FAIL ;; esac; }
cap() {  # cap SECONDS: no later than the hard end, at least 5 s
  local want=$1 left=$((HARD_END - $(now)))
  ((want > left)) && want=$left
  ((want < 5)) && want=5
  echo "$want"
}
hms() { printf '00:%02d:%02d:%02d' $(($1 / 3600)) $(($1 % 3600 / 60)) $(($1 % 60)); }

part() {  # part ID LIMIT LOG CMD...: CMD under timeout, output to LOG, result recorded
  local id=$1 limit=$2 log=$3 t0 rc
  shift 3
  t0=$(now)
  say "part $id: limit ${limit}s, log ${log#"$OUT"/}"
  timeout -k 15 "$limit" "$@" >"$log" 2>&1
  rc=$?
  record "$id" "$(verdict $rc)" $(($(now) - t0)) "rc=$rc"
  say "part $id: $(verdict $rc) after $(($(now) - t0))s"
  return $rc
}

finish() {  # summary table, OUT/summary.{md,json}, logs packed; exit status of the table
  local rc size
  say "done in $(($(now) - START))s. Summary (also in summary.md; logs in gpu_check_logs.tar.gz):"
  "$PY" benchmarks/gpu/gpu_check_summary.py table "$LOGS"
  rc=$?
  cp "$LOGS"/summary.md "$LOGS"/summary.json "$OUT"/ 2>/dev/null
  tar -czf "$OUT/gpu_check_logs.tar.gz" -C "$OUT" logs
  size=$(stat -c %s "$OUT/gpu_check_logs.tar.gz" 2>/dev/null || echo 0)
  if ((size > 15 * 2 ** 20)); then  # the device tool brings back files up to 16 MiB
    tar -czf "$OUT/gpu_check_logs.tar.gz" -C "$OUT" --exclude=logs/part3_tb logs
  fi
  [[ ${GPU_CHECK_KEEP_LOGS:-0} == 1 ]] || rm -rf "$LOGS"
  return $rc
}
cleanup() {  # background lanes never outlive the script; logs are packed even when stopped
  local pid
  for pid in $(jobs -p); do  # a lane is a subshell running `timeout`: stop both
    pkill -TERM -P "$pid" 2>/dev/null
    kill "$pid" 2>/dev/null
  done
  if [[ -d $LOGS && ! -f $OUT/gpu_check_logs.tar.gz ]] &&
    tar -czf "$OUT/gpu_check_logs.tar.gz" -C "$OUT" logs 2>/dev/null; then
    [[ ${GPU_CHECK_KEEP_LOGS:-0} == 1 ]] || rm -rf "$LOGS"  # <= 8 files for the device tool
  fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# ------------------------------------------------------------------ environment
probe() {  # imports everything the parts need; prints the CUDA device count, details to a file
  "$PY" - "$LOGS/env_python.txt" <<'EOF'
import importlib.metadata as md
import platform
import sys

import jsonargparse  # noqa: F401  (what the CLI needs beyond lightning)
import lightly  # noqa: F401
import lightning  # noqa: F401
import torch

import jepa_lightning

n = torch.cuda.device_count() if torch.cuda.is_available() else 0
with open(sys.argv[1], "w") as f:
    cudnn = torch.backends.cudnn.version() if n else None
    print("python", platform.python_version(), sys.executable, file=f)
    print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", cudnn, file=f)
    for name in ("lightning", "jsonargparse", "lightly", "triton", "torchvision"):
        try:
            print(name, md.version(name), file=f)
        except md.PackageNotFoundError:
            print(name, "not installed", file=f)
    print("jepa_lightning from", jepa_lightning.__file__, file=f)
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i} {p.name} {p.total_memory / 2**30:.0f} GiB sm_{p.major}{p.minor}", file=f)
print(n)
EOF
}
if ! NGPU=$(probe 2>"$LOGS/env_probe.log"); then
  "$PY" -c "import jepa_lightning" 2>/dev/null ||
    export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"  # not installed: from the source
  if compgen -G ".whl/*.whl" >/dev/null; then  # carried wheels (benchmarks/gpu/gpu_prepare.sh)
    say "installing the carried wheels of .whl/ into $WORK/site (no index)"
    mkdir -p "$WORK"
    "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$WORK/site" .whl/*.whl >"$LOGS/wheels_install.log" 2>&1
    export PYTHONPATH="$WORK/site:$PYTHONPATH"
  fi
  if ! NGPU=$(probe 2>"$LOGS/env_probe.log"); then
    err=$(tail -1 "$LOGS/env_probe.log")
    say "ERROR: $PY cannot import the package and its dependencies: $err"
    say "install them (pip install -e '.[test]'), or carry .whl/ (bash benchmarks/gpu/gpu_prepare.sh)"
    record 0 FAIL 0 "imports: $err"
    finish
    exit 1
  fi
fi
CLI=("$PY" -m jepa_lightning.cli)  # the entry point of the jepa-lightning command
{
  echo "date: $(date -u +%FT%TZ)  cpus: $(nproc --all)  gpus (torch): $NGPU  python: $PY"
  echo "PYTHONPATH: ${PYTHONPATH:-}"
  cat "$LOGS/env_python.txt"
  git rev-parse HEAD 2>/dev/null && git status --short 2>/dev/null | head -30
  command -v nvidia-smi >/dev/null && nvidia-smi
  free -g 2>/dev/null
} >"$LOGS/env.txt" 2>&1
rm -f "$LOGS/env_python.txt"

# ------------------------------------------------------------------ data
DATA_DIR="" DATA_TAR=""
find_data() {  # sets DATA_DIR (an extracted tree) or DATA_TAR; returns 1 when nothing is found
  local c
  if [[ -n $DATA_ARG ]]; then
    if [[ -d $DATA_ARG/train && -d $DATA_ARG/test ]]; then DATA_DIR=$DATA_ARG
    elif [[ -d $DATA_ARG/cifar10_jpg/train ]]; then DATA_DIR=$DATA_ARG/cifar10_jpg
    elif [[ -f $DATA_ARG ]]; then DATA_TAR=$DATA_ARG
    else return 1; fi
    return 0
  fi
  for c in ../shared/datasets ./shared/datasets ./data; do
    if [[ -f $c/cifar10-jpg.tar.gz ]]; then
      DATA_TAR=$(cd "$c" && pwd)/cifar10-jpg.tar.gz
      return 0
    fi
  done
  return 1
}
extract_data() {  # DATA_TAR -> DATA_DIR under $WORK/data (reused when already extracted)
  local dest=$WORK/data train
  if [[ ! -f $dest/.extracted ]]; then
    rm -rf "$dest" && mkdir -p "$dest" || return 1
    tar -xzf "$DATA_TAR" -C "$dest" && touch "$dest/.extracted" || return 1
  fi
  train=$(find "$dest" -maxdepth 3 -type d -name train | head -1)
  [[ -n $train && -d $(dirname "$train")/test ]] || return 1
  DATA_DIR=$(dirname "$train")
}
tiny_data() {  # a few images per class of DATA_DIR as symlinks (dry run)
  local dest=$WORK/data_tiny split cls f n
  rm -rf "$dest"
  for split in train test; do
    for cls in "$DATA_DIR/$split"/*/; do
      mkdir -p "$dest/$split/$(basename "$cls")"
      n=0
      for f in "$cls"*; do
        ln -s "$f" "$dest/$split/$(basename "$cls")/" && n=$((n + 1))
        ((n >= 6)) && break
      done
    done
  done
  DATA_DIR=$dest
}

# ------------------------------------------------------------------ CPU: smoke only
if ((NGPU == 0)) && [[ $DRYRUN != 1 ]]; then
  say "No CUDA device (torch.cuda.is_available() is False): skipping the CUDA parts 1-4"
  say "(correctness on CUDA, throughput, CIFAR-10 run, DDP). CPU smoke check only."
  part 1-smoke 120 "$LOGS/part1_smoke.log" \
    "$PY" -m pytest tests/modules/test_gpu.py -q -rs -p no:cacheprovider
  part 2-smoke 120 "$LOGS/part2_smoke.log" \
    "$PY" -m benchmarks.speed.throughput --steps 1 --warmup 0 --backbone resnet18 --small-images \
    --image-size 32 --batch-size 4 --threads 1
  if find_data; then
    note="found ${DATA_DIR:-$DATA_TAR} (not extracted without CUDA)"
  else
    note="CIFAR-10 not found (give DATA, or the tar in ../shared/datasets or ./data)"
  fi
  for id in 1 2a 2b; do record "$id" SKIP 0 "skipped: no CUDA"; done
  record 3-data SKIP 0 "$note"
  for id in 3-fit 3-knn 4; do record "$id" SKIP 0 "skipped: no CUDA"; done
  say "the CUDA parts were skipped (no CUDA)"
  finish
  rc=$?
  say "CPU smoke $([[ $rc == 0 ]] && echo passed || echo FAILED); the CUDA parts were skipped"
  exit $rc
fi

# ------------------------------------------------------------------ settings per mode
if ((NGPU > 0)); then
  MODE=cuda
  TP=("$PY" -m benchmarks.speed.throughput --device cuda --backbone resnet50 --image-size 224
    --batch-size 128 --precision bf16 --channels-last)
  TP_EAGER=(--steps 7 --warmup 2) TP_COMPILED=(--steps 5 --warmup 2)
  FIT_EXTRA=() KNN_EXTRA=() DDP_EXTRA=() FIT_BATCH=256
else
  MODE=dryrun  # the CUDA schedule on the CPU, tiny: checks the script, not the library
  say "GPU_CHECK_DRYRUN=1 without CUDA: every part's plumbing on the CPU with tiny settings"
  TP=("$PY" -m benchmarks.speed.throughput --device cpu --backbone resnet18 --small-images
    --image-size 32 --batch-size 4 --threads 1)
  TP_EAGER=(--steps 1 --warmup 0) TP_COMPILED=()
  FIT_EXTRA=(--trainer.accelerator cpu --trainer.precision 32 --data.init_args.batch_size 8
    --data.init_args.num_workers 0 --trainer.limit_train_batches 2 --trainer.limit_val_batches 1
    --trainer.max_epochs 1)
  KNN_EXTRA=(--trainer.accelerator cpu --data.init_args.batch_size 16
    --data.init_args.num_workers 0)
  DDP_EXTRA=(--trainer.accelerator cpu --trainer.sync_batchnorm false --trainer.precision 32
    --data.init_args.batch_size 8 --data.init_args.num_workers 0 --trainer.limit_train_batches 2
    --trainer.limit_val_batches 1)
  FIT_BATCH=8
  NGPU_DDP=2  # two CPU processes (gloo)
fi
say "mode $MODE, $NGPU GPU(s), plan ${BUDGET_S}s, hard limit ${MAX_S}s, out $OUT"
mkdir -p "$WORK" || exit 2

t0=$(now)
if find_data && { [[ -n $DATA_DIR ]] || extract_data; }; then
  [[ $MODE == dryrun ]] && tiny_data
  record 3-data PASS $(($(now) - t0)) "$DATA_DIR"
else
  record 3-data FAIL $(($(now) - t0)) "CIFAR-10 not found/extractable (${DATA_ARG:-no DATA})"
  DATA_DIR=""
fi
case $WORK/ in "$REPO"/*) say "warning: GPU_CHECK_WORK=$WORK is inside the repository" ;; esac

# ------------------------------------------------------------------ parts 3 (fit) + 1 + 2 warm-up
# Concurrent lanes: the CIFAR-10 fit (GPU + 8 loader workers), the correctness tests (small GPU
# work, compiles) and a cold compile of the throughput model that fills inductor's on-disk cache,
# so that the measured compiled run of part 2 later compiles from the cache.
ddp=$((NGPU >= 2 || ${NGPU_DDP:-0} >= 2))
LANE_ENV=(TORCHINDUCTOR_COMPILE_THREADS=4)  # the lanes share the CPUs with 8 loader workers
((NGPU >= 2)) && LANE_ENV+=(CUDA_VISIBLE_DEVICES=1)  # and the fit has GPU 0 to itself
reserve=$((KNN_RESERVE + EAGER_RESERVE + COMPILED_RESERVE + ddp * DDP_RESERVE))
window=$((PLAN_END - $(now) - reserve - FIT_OVERHEAD))
((window > TRAIN_MAX)) && window=$TRAIN_MAX
lane_limit=$(cap $((window + FIT_OVERHEAD)))
((lane_limit < 150)) && lane_limit=$(cap 150)
RUN_DIR=$WORK/runs/cifar10_cnn_jepa_resnet18/version_0
fit_pid="" util_pid=""
if [[ -n $DATA_DIR ]] && ((window >= 30)); then
  rm -rf "$WORK/runs/cifar10_cnn_jepa_resnet18"
  fit_t0=$(now)
  part 3-fit "$(cap $((window + 120)))" "$LOGS/part3_fit.log" \
    "${CLI[@]}" fit --config configs/cifar10_cnn_jepa_resnet18.yaml \
    --data jepa_lightning.ImageFolderDataModule --data.init_args.root "$DATA_DIR" \
    --data.init_args.val_split test --trainer.max_time "$(hms "$window")" \
    --trainer.max_epochs "$EPOCHS" --model.init_args.warmup_epochs 2 \
    --trainer.logger.init_args.save_dir "$WORK/runs" --trainer.enable_progress_bar false \
    "${FIT_EXTRA[@]}" &
  fit_pid=$!
  if [[ $MODE == cuda ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
      -l 2 >"$LOGS/part3_gpu_util.csv" 2>/dev/null &
    util_pid=$!
  fi
  say "part 3: training window ${window}s (max_epochs $EPOCHS), in the background"
else
  record 3-fit SKIP 0 "no data or no time left (window ${window}s)"
fi
warm_pid=""
if ((${#TP_COMPILED[@]})); then
  part 2w "$lane_limit" "$LOGS/part2_compile_warmup.log" \
    env "${LANE_ENV[@]}" "${TP[@]}" --compile --steps 1 --warmup 0 &
  warm_pid=$!
fi
part 1 "$lane_limit" "$LOGS/part1_tests.log" \
  env "${LANE_ENV[@]}" "$PY" -m pytest tests/modules/test_gpu.py -m gpu -v -rfEs -p no:cacheprovider \
  --durations=15 --junitxml="$LOGS/part1_junit.xml"
[[ -n $warm_pid ]] && wait "$warm_pid"
if [[ -n $fit_pid ]]; then
  wait "$fit_pid"
  fit_s=$(($(now) - fit_t0))
  [[ -n $util_pid ]] && kill "$util_pid" 2>/dev/null
  CKPT=$RUN_DIR/checkpoints/last.ckpt
  [[ -f $CKPT ]] || CKPT=$(ls -t "$RUN_DIR"/checkpoints/*.ckpt 2>/dev/null | head -1)
  "$PY" benchmarks/gpu/gpu_check_summary.py run-info "$RUN_DIR" "$LOGS" --batch-size "$FIT_BATCH" \
    --seconds "$fit_s" >"$LOGS/part3_run_info.log" 2>&1
  mkdir -p "$LOGS/part3_tb"
  cp "$RUN_DIR"/events.out.tfevents.* "$RUN_DIR"/*.yaml "$LOGS/part3_tb/" 2>/dev/null

  # ---------------------------------------------------------------- part 3: k-NN, both at once
  if [[ -n $CKPT && -f $CKPT ]]; then
    KNN=("${CLI[@]}" validate --config configs/eval/knn_cifar10.yaml
      --data jepa_lightning.ImageFolderDataModule --data.init_args.root "$DATA_DIR" \
    --data.init_args.val_split test --trainer.enable_progress_bar false "${KNN_EXTRA[@]}")
    say "part 3-knn: the checkpoint's and a random encoder's k-NN, at once"
    knn_t0=$(now)
    limit=$(cap 150)
    timeout -k 15 "$limit" "${KNN[@]}" --model.init_args.checkpoint "$CKPT" \
      --trainer.default_root_dir "$WORK/knn_ckpt" >"$LOGS/part3_knn_ckpt.log" 2>&1 &
    knn_pid=$!
    timeout -k 15 "$limit" "${KNN[@]}" --trainer.default_root_dir "$WORK/knn_random" \
      >"$LOGS/part3_knn_random.log" 2>&1
    rc_random=$?
    wait "$knn_pid"
    rc_ckpt=$?
    rc=$((rc_ckpt != 0 ? rc_ckpt : rc_random))
    record 3-knn "$(verdict $rc)" $(($(now) - knn_t0)) "rc ckpt=$rc_ckpt random=$rc_random"
    say "part 3-knn: $(verdict $rc) after $(($(now) - knn_t0))s"
  else
    record 3-knn FAIL 0 "no checkpoint written by the fit"
  fi
else
  record 3-knn SKIP 0 "no fit"
fi

# ------------------------------------------------------------------ part 4: DDP on one node
if ((ddp)) && [[ -n $DATA_DIR ]]; then
  rm -rf "$WORK/runs_ddp"
  part 4 "$(cap 150)" "$LOGS/part4_ddp.log" \
    "${CLI[@]}" fit --config configs/cifar10_cnn_jepa_resnet18.yaml \
    --config benchmarks/gpu/gpu_check_ddp.yaml --data jepa_lightning.ImageFolderDataModule --data.init_args.root "$DATA_DIR" \
    --data.init_args.val_split test \
    --trainer.logger.init_args.save_dir "$WORK/runs_ddp" "${DDP_EXTRA[@]}"
  cp "$WORK"/runs_ddp/gpu_check_ddp/version_0/metrics.csv "$LOGS/part4_metrics.csv" 2>/dev/null
elif ((ddp)); then
  record 4 SKIP 0 "no data"
else
  record 4 SKIP 0 "only $NGPU GPU: the 2-process NCCL run needs 2"
fi

# ------------------------------------------------------------------ part 2: throughput, alone
part 2a "$(cap 90)" "$LOGS/part2_eager.log" "${TP[@]}" "${TP_EAGER[@]}"
if ((${#TP_COMPILED[@]})); then
  part 2b "$(cap 240)" "$LOGS/part2_compiled.log" "${TP[@]}" --compile "${TP_COMPILED[@]}"
else
  record 2b SKIP 0 "dry run: no compiled throughput on the CPU"
fi

finish
