#!/usr/bin/env bash
# Stage what benchmarks/gpu/gpu_check.sh needs on the GPU machine (see benchmarks/gpu/GPU.md),
# here, where pip reaches a registry. Both folders are git-ignored; the device call carries them:
#
#   bash benchmarks/gpu/gpu_prepare.sh   # -> .whl/ (1.7 MB of wheels), data/cifar10-jpg.tar.gz (20 MB)
#
# The device machine has PyTorch, Lightning, torchmetrics, tensorboard, scikit-learn and pytest
# but no package registry, and the ../shared beside the checkout does not travel. What the
# package needs beyond that image (found from the installed packages' metadata against the
# machine's package list in the device tool's KINDS.md) is pure Python: these seven wheels, at
# the versions this project is tested with. gpu_check.sh installs them with --no-index when the
# package does not import.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PYTHON:-python3}
mkdir -p .whl
rm -f .whl/*.whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 \
  lightly==1.6.0 hydra-core==1.3.8 omegaconf==2.3.1
# hydra-core pins antlr4-python3-runtime 4.9.*, published as a source archive only: build its
# (pure Python) wheel here.
"$PY" -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -l .whl

tar=../shared/datasets/cifar10-jpg.tar.gz
if [[ -f data/cifar10-jpg.tar.gz ]]; then
  echo "data/cifar10-jpg.tar.gz is there already"
elif [[ -f $tar ]]; then
  mkdir -p data && cp "$tar" data/  # a copy: a symbolic link would travel as a link only
  echo "copied $tar to data/"
else
  echo "warning: $tar not found; give gpu_check.sh a DATA path on the GPU machine" >&2
fi
for d in .whl data; do
  git check-ignore -q "$d/x" || echo "warning: $d/ is not git-ignored" >&2
done
du -sh .whl data 2>/dev/null
