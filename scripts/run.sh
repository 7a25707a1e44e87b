#!/usr/bin/env bash
# The main job: set up, then run `qwenimage` with the given arguments (default: the graph server, `qwenimage serve --models-dir models`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then set -- serve --models-dir models; fi
exec qwenimage "$@"
