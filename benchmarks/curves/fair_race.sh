#!/usr/bin/env bash
# The fair 30-minute CIFAR-10 race (issue 32), one method at a time on a quiet machine: plan it
# (calibrated against reference BYOL steps timed just before and after), train it alone, then
# evaluate it. Resumable: a planned method is not re-timed, a trained one not retrained, an
# evaluated snapshot not re-evaluated. Run it from a frozen copy of the repository so that edits
# to the working tree cannot change a run midway:
#   git worktree add ~/race/tree HEAD && nohup ~/race/tree/benchmarks/curves/fair_race.sh > race.log &
# METHODS="cnn_jepa byol" limits it to some methods; DATA is the CIFAR-10 JPEG tree.
set -u
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
# The library and the benchmarks of this copy, not an editable install elsewhere:
export PYTHONPATH="$ROOT/src:$ROOT"
RESULTS="${RESULTS:-$ROOT/benchmarks/results}"
COMMON=(--budget-min 30 --threads 2 --workers 1 --data "${DATA:-$HOME/data/cifar10_jpg}"
        --tag fair30 --plans "$RESULTS/curve30_fair_plans" --csv "$RESULTS/curve30_fair.csv")
METHODS="${METHODS:-cnn_jepa byol lejepa vicreg simclr cjepa ijepa lejepa_vit cnn_jepa_paper}"
for m in $METHODS; do
  python -m benchmarks.curves.learning_curve --phase plan "${COMMON[@]}" --methods "$m" || exit 1
  python -m benchmarks.curves.learning_curve --phase train "${COMMON[@]}" --methods "$m" || exit 1
  python -m benchmarks.curves.learning_curve --phase eval "${COMMON[@]}" --methods "$m" || exit 1
done
python -m benchmarks.curves.learning_curve --phase report "${COMMON[@]}" --methods $METHODS \
  --png "$RESULTS/curve30_fair.png"
