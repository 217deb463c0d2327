#!/usr/bin/env bash
# Runs every test of the workspace, including the ones against real peers:
# DistKV's own Python client (a venv with distkv 0.65 is created once) and
# schemathesis against the REST API (its own venv, created once).
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

# schemathesis for the REST contract run, in its own venv (its
# dependencies do not mix with DistKV's pinned ones).
st=${KEYCARD_ST_VENV:-.venv-schemathesis}
if ! "$st/bin/schemathesis" --version >/dev/null 2>&1; then
    echo "== creating $st (schemathesis, the REST API contract run)"
    python3 -m venv "$st"
    "$st/bin/pip" install --quiet --disable-pip-version-check \
        schemathesis==3.39.16 hypothesis==6.112.0
fi
KEYCARD_SCHEMATHESIS="$(cd "$st" && pwd)/bin/schemathesis"
export KEYCARD_SCHEMATHESIS

exec cargo test --workspace "$@"
