#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh: ./.venv unless an environment is active), then run `qwenimage` with the
# given arguments (default: the graph server, `qwenimage serve --models-dir models`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh ""   # (an explicit "": a bare `source` would hand it this script's arguments)
if [ $# -eq 0 ]; then set -- serve --models-dir models --preview-method auto; fi  # live previews in the editor
exec "$PY" -m qwenimage.cli "$@"
