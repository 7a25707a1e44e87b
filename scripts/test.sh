#!/usr/bin/env bash
# Set up with the test extra (pytest, and diffusers as the parity oracle), then run the whole suite; arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test
exec "$PY" -m pytest -q "$@"
