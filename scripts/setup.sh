#!/usr/bin/env bash
# Set up the project: `bash scripts/setup.sh [EXTRA]` (EXTRA: test, train, ...). run.sh and test.sh source it and
# then use $PY, the environment's python.
# - The environment: $PYTHON if set; else the active virtualenv or conda environment; else ./.venv, created here
#   (a stock Debian/Ubuntu python refuses `pip install` outside one).
# - Installs once: a stamp in the environment holds a hash of pyproject.toml, the extra and this folder; it is
#   reinstalled only when one of those changes or the package is gone.
# - torch first (a bare `torch` requirement would pull the newest build): with no NVIDIA GPU, the CPU build from
#   PyTorch's own index when that answers within seconds, else whatever the default index has.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EXTRA=${1:-}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

say() { echo "setup: $*" >&2; }

make_venv() {  # ./.venv with python3 -m venv, or virtualenv; Debian ships venv's pip separately
    local base=${PYTHON3:-python3}
    command -v "$base" >/dev/null || { say "no python3 on PATH; install Python 3.10 or newer"; return 1; }
    "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || { say "$("$base" --version 2>&1) is too old: Python 3.10 or newer is needed"; return 1; }
    say "creating a virtual environment in $ROOT/.venv"
    if "$base" -c 'import venv, ensurepip' 2>/dev/null; then
        "$base" -m venv "$ROOT/.venv" && return 0
    fi
    rm -rf "$ROOT/.venv"
    if command -v virtualenv >/dev/null; then
        virtualenv -q -p "$base" "$ROOT/.venv" && return 0
        rm -rf "$ROOT/.venv"
    fi
    local v; v=$("$base" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    say "cannot create a virtual environment: this python has no venv/ensurepip module (Debian and Ubuntu ship"
    say "it apart). Install it with:  sudo apt-get install python3-venv  (or python$v-venv), then run this again;"
    say "or activate an environment of your own first, or set PYTHON=/path/to/python."
    return 1
}

pick_python() {
    if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
    elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then PY=$VIRTUAL_ENV/bin/python
    elif [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python" ]; then PY=$CONDA_PREFIX/bin/python
    else
        [ -x "$ROOT/.venv/bin/python" ] || make_venv || return 1
        PY=$ROOT/.venv/bin/python
    fi
}

has_nvidia_gpu() { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q GPU; }

# 0 when $1 answers within $2 seconds (DNS included: pip would wait 180 s and retry before giving up)
reachable() {
    "$PY" - "$1" "$2" <<'EOF'
import sys, threading, urllib.request
url, limit = sys.argv[1], float(sys.argv[2])
ok = []
def probe():
    try:
        with urllib.request.urlopen(url, timeout=limit):
            ok.append(True)
    except Exception:
        pass
t = threading.Thread(target=probe, daemon=True)
t.start()
t.join(limit)
sys.exit(0 if ok else 1)
EOF
}

install_torch() {
    "$PY" -c "import torch" 2>/dev/null && return 0
    local spec="torch==${TORCH_VERSION:-2.13.0}"
    if has_nvidia_gpu; then
        say "installing $spec (NVIDIA GPU found: the default index's CUDA build)"
        "$PY" -m pip install -q "$spec"
    elif reachable "$TORCH_CPU_INDEX/torch/" 5; then
        say "installing $spec, the CPU build (no NVIDIA GPU)"
        "$PY" -m pip install -q --index-url "$TORCH_CPU_INDEX" "$spec"
    else
        say "no NVIDIA GPU, and $TORCH_CPU_INDEX does not answer: installing $spec from the default index"
        "$PY" -m pip install -q "$spec"
    fi
}

stamp_value() {  # what the installed state depends on
    { cat "$ROOT/pyproject.toml"; echo "extra=$EXTRA root=$ROOT"; } | "$PY" -c \
        'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}

installed_here() {  # the package this environment imports is this folder's (an editable install of it)
    "$PY" - "$ROOT" <<'EOF'
import importlib.util, os, sys
spec = importlib.util.find_spec("qwenimage")
ok = spec is not None and spec.origin is not None and \
    os.path.realpath(os.path.dirname(spec.origin)) == os.path.realpath(sys.argv[1])
sys.exit(0 if ok else 1)
EOF
}

up_to_date() {  # this extra's stamp is current; with no extra, any extra's will do (each includes the base)
    local f e
    for f in "$PREFIX"/.qwenimage-setup*; do
        [ -f "$f" ] || continue
        e=${f##*/.qwenimage-setup}; e=${e#-}
        [ -z "$EXTRA" ] || [ "$e" = "$EXTRA" ] || continue
        [ "$(cat "$f")" = "$(EXTRA=$e stamp_value)" ] && installed_here && return 0
    done
    return 1
}

setup_main() {
    pick_python || return 1
    PREFIX=$("$PY" -c 'import sys; print(sys.prefix)')
    up_to_date && return 0
    install_torch
    say "installing the package (editable${EXTRA:+, extra [$EXTRA]}) into $PREFIX"
    "$PY" -m pip install -q -e "$ROOT${EXTRA:+[$EXTRA]}"
    local stamp=$PREFIX/.qwenimage-setup${EXTRA:+-$EXTRA}
    stamp_value > "$stamp" || say "could not write $stamp: the next run installs again"
}

setup_main   # (not in an `||`: that would switch off `set -e` inside it, and a failed install would be stamped)
if [ "${BASH_SOURCE[0]}" = "$0" ] && [ "$PY" = "$ROOT/.venv/bin/python" ]; then
    say "ready; to use it in this shell: source .venv/bin/activate"
fi
