#!/usr/bin/env bash
# Build MinkowskiEngine 0.5.4 (CPU-only, OpenBLAS) into a wheel cache outside the repository and
# install it into the current Python environment: the optional `minkowski` sparse backend.
#
#   bash scripts/install_minkowski.sh          # ~6 min the first time on 2 cores, seconds after
#
# Why a script and not just `pip install`: MinkowskiEngine's last release (2021) ships only an
# sdist whose setup.py needs `numpy.distutils` (gone from numpy 2) for its metadata step and
# custom flags (--cpu_only --blas=...) for its build. The recipe below is the one checked on our
# machines (Python 3.11, torch 2.14.1, numpy 2.4):
#  1. the sdist is downloaded by pip in a throwaway venv that sees the installed torch and holds
#     numpy<2 / setuptools<60 (only so that pip's metadata step can run setup.py);
#  2. the wheel is built in *this* environment with `setup.py bdist_wheel --cpu_only
#     --blas=openblas` and cached per torch version (it links against torch's C++ ABI);
#  3. the wheel is installed with --no-deps.
# Environment: PYTHON (default: python), JEPA_WHEEL_CACHE (default: ~/.cache/jepa-lightning/wheels).
set -euo pipefail
PY="${PYTHON:-python}"
TORCH=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
CACHE="${JEPA_WHEEL_CACHE:-$HOME/.cache/jepa-lightning/wheels}/torch-$TORCH"
SHIM="import collections, collections.abc; collections.Sequence = collections.abc.Sequence"

if "$PY" -c "$SHIM; import MinkowskiEngine" 2>/dev/null; then
  echo "MinkowskiEngine is already installed."
  exit 0
fi
mkdir -p "$CACHE"
wheel=$(ls "$CACHE"/[Mm]inkowski[Ee]ngine-0.5.4-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq libopenblas-dev
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PY" -m venv --system-site-packages "$work/venv"
  "$work/venv/bin/pip" install -q "numpy<2" "setuptools<60" "wheel<0.42"
  (cd "$work" && "$work/venv/bin/pip" download -q --no-deps --no-build-isolation \
    "minkowskiengine==0.5.4" -d "$work")
  tar -xzf "$work/MinkowskiEngine-0.5.4.tar.gz" -C "$work"
  "$PY" -m pip install -q wheel
  (cd "$work/MinkowskiEngine-0.5.4" && \
    MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" setup.py -q bdist_wheel --cpu_only --blas=openblas -d "$CACHE")
  wheel=$(ls "$CACHE"/[Mm]inkowski[Ee]ngine-0.5.4-*.whl | head -n 1)
fi
"$PY" -m pip install -q --no-deps "$wheel"
"$PY" -c "$SHIM; import MinkowskiEngine as ME; print('MinkowskiEngine', ME.__version__, 'installed')"
