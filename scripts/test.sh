#!/usr/bin/env bash
# Runs every test of the workspace, including the ones against real peers:
# DistKV's own Python client (a venv with distkv 0.65 is created once).
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${KEYCARD_VENV:-.venv-distkv}
if ! "$venv/bin/python" -c "import distkv, trio, scramp" 2>/dev/null; then
    echo "== creating $venv (DistKV 0.65 client, used by the compatibility tests)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        distkv==0.65.0 moat-util==0.35.0 greenback trio==0.22.2 async_generator scramp==1.5.0
fi
KEYCARD_DISTKV_PYTHON="$(cd "$venv" && pwd)/bin/python"
export KEYCARD_DISTKV_PYTHON

exec cargo test --workspace "$@"
