#!/usr/bin/env bash
# Check the node pack and the shipped demo model in a real ComfyUI (the suite cannot run ComfyUI itself).
#
#   bash scripts/check_in_comfyui.sh COMFYUI_DIR
#
# COMFYUI_DIR is a ComfyUI checkout; it is not changed. ComfyUI runs on the CPU with --base-directory in a
# scratch folder holding custom_nodes/qwenimage (a link to this repository) and models/ with copies of the
# demo files in their ComfyUI folders, so its models, custom nodes, inputs and outputs are not touched.
# The import log must show the pack loaded; scripts/check_in_comfyui.py then runs workflows/api/demo.json over
# ComfyUI's API and checks the image and more (see there).
#
# COMFY_PYTHON  the Python that runs ComfyUI. Default: COMFYUI_DIR's venv/ or .venv/ when there; else a venv
#               made in $COMFY_VENV (default: ~/.cache/qwenimage/comfyui-venv, kept for the next run) with
#               --system-site-packages and ComfyUI's requirements.txt installed (torch from the system site when
#               its torchvision imports; else pip brings a matching pair)
# PYTHON        the Python with this package and its test extra (runs the client), default: .venv/bin/python
#               or python3
# WORK          the scratch folder (default: a new temporary one, removed at the end unless KEEP=1); on a
#               failure the end of ComfyUI's log is printed
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMFY="${1:?usage: bash scripts/check_in_comfyui.sh COMFYUI_DIR}"
COMFY="$(cd "$COMFY" && pwd)"
[ -f "$COMFY/main.py" ] && [ -f "$COMFY/folder_paths.py" ] || { echo "$COMFY is not a ComfyUI checkout (no main.py)" >&2; exit 2; }
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
"$PYTHON" -c "import qwenimage, aiohttp, pytest" 2>/dev/null ||
    { echo "$PYTHON lacks the qwenimage package with its test extra: run scripts/setup.sh test or set PYTHON" >&2; exit 2; }

OWN_WORK=0
if [ -z "${WORK:-}" ]; then WORK="$(mktemp -d -t qwenimage-comfyui-XXXXXX)"; OWN_WORK=1; fi
mkdir -p "$WORK"
SERVER_PID=""
cleanup() {
    local rc=$?
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    if [ "$rc" != 0 ] && [ -f "$WORK/comfyui.log" ]; then echo "== the end of ComfyUI's log:"; tail -40 "$WORK/comfyui.log"; fi
    if [ "${KEEP:-0}" != 1 ]; then
        if [ "$OWN_WORK" = 1 ]; then rm -rf "$WORK"; else rm -rf "$WORK/base"; fi
    fi
}
trap cleanup EXIT

# --- ComfyUI's Python
if [ -z "${COMFY_PYTHON:-}" ]; then
    for v in "$COMFY/venv" "$COMFY/.venv"; do
        [ -x "$v/bin/python" ] && COMFY_PYTHON="$v/bin/python" && break
    done
fi
if [ -z "${COMFY_PYTHON:-}" ]; then
    VENV="${COMFY_VENV:-$HOME/.cache/qwenimage/comfyui-venv}"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "== making $VENV for ComfyUI (its requirements.txt)"
        mkdir -p "$(dirname "$VENV")"
        python3 -m venv --system-site-packages "$VENV"
        if python3 -c "import torch, torchvision" 2>/dev/null; then  # keep the system's working torch
            grep -vE '^(torch|torchvision|torchaudio)([<>=~ ].*)?$' "$COMFY/requirements.txt" > "$WORK/requirements.txt"
        else
            cp "$COMFY/requirements.txt" "$WORK/requirements.txt"
        fi
        "$VENV/bin/pip" install -q -r "$WORK/requirements.txt"
    fi
    COMFY_PYTHON="$VENV/bin/python"
fi
COMMIT="$(git -C "$COMFY" rev-parse HEAD 2>/dev/null || true)"
VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFY/comfyui_version.py" 2>/dev/null || true)"
echo "== ComfyUI ${VERSION:-?} ${COMMIT:-(not a git checkout)} at $COMFY, run by $COMFY_PYTHON"

# --- the base folder: the pack as a custom node, the demo files in ComfyUI's model folders
BASE="$WORK/base"
rm -rf "$BASE"
mkdir -p "$BASE/custom_nodes" "$BASE/user"
ln -s "$REPO" "$BASE/custom_nodes/qwenimage"
for kind in diffusion_models text_encoders vae; do
    mkdir -p "$BASE/models/$kind"
    cp "$REPO"/demo/models/$kind/*.safetensors "$BASE/models/$kind/"
done

# --- start it and read the import log
PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"
LOG="$WORK/comfyui.log"
(cd "$COMFY" && exec "$COMFY_PYTHON" main.py --cpu --listen 127.0.0.1 --port "$PORT" --base-directory "$BASE" \
    --user-directory "$BASE/user" --disable-auto-launch) > "$LOG" 2>&1 &
SERVER_PID=$!
echo "== ComfyUI starting on $URL (log: $LOG)"
for _ in $(seq 1 300); do
    "$PYTHON" - "$URL" <<'EOF' 2>/dev/null && break
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/system_stats", timeout=2)
EOF
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then tail -40 "$LOG"; echo "FAIL  ComfyUI exited during start-up" >&2; exit 1; fi
    sleep 2
done
line="$(grep -E "^ +[0-9.]+ seconds.*custom_nodes/qwenimage$" "$LOG" || true)"
if [ -z "$line" ] || [[ "$line" == *"IMPORT FAILED"* ]] || grep -q "Cannot import .*custom_nodes/qwenimage" "$LOG"; then
    grep -n -B30 "custom_nodes/qwenimage" "$LOG" | tail -60
    echo "FAIL  the pack did not import (log: $LOG)" >&2
    exit 1
fi
echo "ok    ComfyUI imported the pack:$line"

"$PYTHON" "$REPO/scripts/check_in_comfyui.py" "$URL"
echo "== all checks passed in ComfyUI ${VERSION:-?} ${COMMIT:-}"
