#!/usr/bin/env bash
# The fair CIFAR-10 race (issue 32), one method at a time on a quiet machine: plan it (calibrated
# against reference BYOL steps timed just before and after), train it alone, then evaluate it.
# Resumable: a planned method is not re-timed, a trained one not retrained, an evaluated snapshot
# not re-evaluated. Run it from a frozen copy of the repository so that edits to the working tree
# cannot change a run midway:
#   git worktree add ~/race/tree HEAD
#   RESULTS=$PWD/benchmarks/results nohup ~/race/tree/benchmarks/curves/fair_race.sh > race.log &
# Settings (environment): METHODS limits it to some methods; DATA is the CIFAR-10 JPEG tree;
# PHASES="plan train" trains without evaluating (evaluation is untimed: it may run later, beside
# other work, while training must run alone); SNAPSHOTS=ends evaluates step 0 and the last step
# first (the rest on a later call). The 30-minute race is the default; the issue-33
# screening runs the same harness shorter, under its own names; a NAME starting with "screen"
# never reads the test images (TEST_SIZE 0: only the selection split is scored and reported):
#   BUDGET=10 EVALS=2 NAME=screen10 METHODS="cnn_jepa cnn_jepa:regularizer=sigreg,..." fair_race.sh
set -u
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
# The library and the benchmarks of this copy, not an editable install elsewhere:
export PYTHONPATH="$ROOT/src:$ROOT"
RESULTS="${RESULTS:-$ROOT/benchmarks/results}"
BUDGET="${BUDGET:-30}"
NAME="${NAME:-curve30_fair}"  # the CSV, plot and plan folder; the run folder is TAG
TAG="${TAG:-$([ "$NAME" = curve30_fair ] && echo fair30 || echo "$NAME")}"
case "$NAME" in screen*) TEST_SIZE="${TEST_SIZE:-0}" ;; *) TEST_SIZE="${TEST_SIZE:-10000}" ;; esac
COMMON=(--budget-min "$BUDGET" --evals "${EVALS:-6}" --snapshots "${SNAPSHOTS:-all}" --threads 2 --workers 1
        --test-size "$TEST_SIZE"
        --data "${DATA:-$HOME/data/cifar10_jpg}" --tag "$TAG"
        --plans "$RESULTS/${NAME}_plans" --csv "$RESULTS/$NAME.csv")
METHODS="${METHODS:-cnn_jepa byol lejepa vicreg simclr cjepa ijepa lejepa_vit cnn_jepa_paper}"
for m in $METHODS; do
  for phase in ${PHASES:-plan train eval}; do
    python -m benchmarks.curves.learning_curve --phase "$phase" "${COMMON[@]}" --methods "$m" \
      || exit 1
  done
done
case " ${PHASES:-eval} " in
  *" eval "*) python -m benchmarks.curves.learning_curve --phase report "${COMMON[@]}" \
                --methods $METHODS --png "$RESULTS/$NAME.png" ;;
esac
