#!/usr/bin/env bash
# One-command set-up.  bash setup.sh demo  -> install + run the demo pipeline on the embedded default
#                      bash setup.sh test  -> install + run the test suite
# Uses the active virtualenv if there is one, else creates ./.venv. On machines without CUDA the CPU
# torch wheel is installed first so pip does not pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
mode="${1:-test}"
PY="${PYTHON:-python3}"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  PY="$PWD/.venv/bin/python"
else
  PY="$(command -v python)"
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install -q "torch>=2.4,<2.15"
  else
    "$PY" -m pip install -q torch==2.13.0 2>/dev/null \
      || "$PY" -m pip install -q "torch>=2.4,<2.15" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
# The dependencies and (its last line, `-e .`) the project itself, editable: scripts in subfolders (compare_model/,
# tools/, sft_train/) import its packages. Run from the repository root (this script cd's there above).
"$PY" -m pip install -q -r requirements.txt
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
