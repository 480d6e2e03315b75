#!/usr/bin/env bash
# One-command set-up.  bash setup.sh demo  -> install + run the demo pipeline on the embedded default
#                      bash setup.sh test  -> install + run the test suite
# Uses the active virtualenv if there is one, else creates ./.venv. On machines without CUDA the CPU
# torch wheel is installed first so pip does not pull a multi-GB CUDA build.
# Progress: a line per step with the time since the start, and pip's own lines (each package as it is collected,
# downloaded and installed; the first install takes minutes, mostly torch).
set -euo pipefail
cd "$(dirname "$0")"
mode="${1:-test}"
PY="${PYTHON:-python3}"
start=$SECONDS
step() { printf 'setup.sh [%dm%02ds] %s\n' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)) "$*"; }
pip_install() { "$PY" -m pip install --progress-bar on "$@"; }
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then step "creating the virtual environment ./.venv"; "$PY" -m venv .venv; fi
  PY="$PWD/.venv/bin/python"
else
  PY="$(command -v python)"
fi
step "python: $PY"
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    step "installing torch (CUDA build: the largest download of the set-up)"
    pip_install "torch>=2.4,<2.15"
  else
    step "installing torch for the CPU"
    if ! pip_install torch==2.13.0; then
      step "torch==2.13.0 is not on the default index here: installing from PyTorch's CPU wheel index"
      pip_install "torch>=2.4,<2.15" --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
  step "torch installed"
fi
# The dependencies and (its last line, `-e .`) the project itself, editable: scripts in subfolders (compare_model/,
# tools/, sft_train/) import its packages. Run from the repository root (this script cd's there above).
step "installing requirements.txt (transformers, accelerate, peft, datasets, ... and this project, editable)"
pip_install -r requirements.txt
step "installed; running: $mode"
export PATH="$(dirname "$PY"):$PATH"
case "$mode" in
  test)
    set +e
    "$PY" -m pytest -q -p no:cacheprovider tests "${@:2}"
    rc=$?
    set -e
    # pytest exit code 5 = no tests collected: not a failure of the set-up itself.
    [ "$rc" -eq 5 ] && rc=0
    exit "$rc"
    ;;
  demo)
    bash demo.sh "${@:2}"
    ;;
  *)
    echo "usage: bash setup.sh demo|test" >&2; exit 2 ;;
esac
