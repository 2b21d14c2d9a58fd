#!/usr/bin/env bash
# Install PyTorch into the given Python's environment, choosing the right build:
#   - already installed: nothing to do;
#   - an NVIDIA GPU (nvidia-smi works): the default CUDA build from PyPI;
#   - no GPU and a local wheel of torch==$TORCH_VERSION (pip find-links / wheelhouse): that wheel;
#   - no GPU otherwise: the CPU-only build from PyTorch's CPU index (a plain `pip install torch`
#     on Linux pulls several GB of CUDA libraries that a CPU machine cannot use).
# Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.6.0") or TORCH_INDEX_URL.
set -euo pipefail
PY=${1:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if "$PY" -c "import torch" 2>/dev/null; then
  echo "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  exec "$PY" -m pip install "${TORCH_SPEC:-torch>=2.4}"
fi
if [ "$(uname -s)" = "Darwin" ]; then
  exec "$PY" -m pip install "${TORCH_SPEC:-torch==$TORCH_VERSION}"   # macOS wheels are CPU/MPS builds
fi
# a dry run asks whether a local wheel is offered without copying it (pip download would copy
# ~200 MB, and CI once ran out of disk during set-up)
if "$PY" -m pip install --dry-run -q --no-index --no-deps "torch==$TORCH_VERSION" >/dev/null 2>&1; then
  exec "$PY" -m pip install "${TORCH_SPEC:-torch==$TORCH_VERSION}"   # a local CPU wheel is offered
fi
exec "$PY" -m pip install "${TORCH_SPEC:-torch==$TORCH_VERSION}" --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" --extra-index-url https://pypi.org/simple
