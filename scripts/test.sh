#!/usr/bin/env bash
# Set up with the test extra (pytest, and diffusers as the parity oracle), then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec python3 -m pytest -q "$@"
