#!/usr/bin/env bash
# Install the project (editable) with its dependencies. torch goes first: a bare `torch` requirement with no
# torch installed would pull the newest build with gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extra=${1:-}
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
"$PY" -m pip install -q -e ".${extra:+[$extra]}"
