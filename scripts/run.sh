#!/usr/bin/env bash
# The main job: set up, then run `qwenimage` with the given arguments (default: the self-check).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then set -- selfcheck; fi
exec qwenimage "$@"
