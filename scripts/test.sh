#!/usr/bin/env bash
# Runs every test of the workspace, including the ones against real peers:
# DistKV's own Python client (a venv with distkv 0.65 is created once),
# schemathesis against the REST API (its own venv, created once) and the
# login page in headless Chromium (playwright-core, installed once by npm).
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

# The browser test (crates/keycard/tests/browser.rs): playwright-core from
# npm, pinned in tests/browser/package-lock.json, installed with `npm ci`
# into KEYCARD_BROWSER_NODE_DIR (default tests/browser) and reused while the
# lock file is unchanged; and Debian's chromium (apt-get install chromium),
# or the browser KEYCARD_CHROMIUM names. KEYCARD_SKIP_PEERS=1 skips it.
if [ -z "${KEYCARD_SKIP_PEERS:-}" ]; then
    src="$(cd tests/browser && pwd)"
    nodedir=${KEYCARD_BROWSER_NODE_DIR:-tests/browser}
    mkdir -p "$nodedir"
    nodedir="$(cd "$nodedir" && pwd)"
    stamp="$nodedir/node_modules/.keycard-package-lock.json"
    if ! cmp -s "$src/package-lock.json" "$stamp" \
        || [ ! -f "$nodedir/node_modules/playwright-core/package.json" ]; then
        if ! command -v npm >/dev/null 2>&1; then
            echo "error: the browser test needs Node.js (20 or later) and npm;" \
                "install them, or set KEYCARD_SKIP_PEERS=1 to skip the peer tests" >&2
            exit 1
        fi
        echo "== npm ci in $nodedir (playwright-core, used by the browser test)"
        if [ "$nodedir" != "$src" ]; then
            cp "$src/package.json" "$src/package-lock.json" "$nodedir/"
        fi
        (cd "$nodedir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
        cp "$src/package-lock.json" "$stamp"
    fi
    KEYCARD_BROWSER_NODE_DIR=$nodedir
    export KEYCARD_BROWSER_NODE_DIR
    if [ -z "${KEYCARD_CHROMIUM:-}" ]; then
        KEYCARD_CHROMIUM="$(command -v chromium || true)"
    fi
    if [ -z "$KEYCARD_CHROMIUM" ]; then
        echo "warning: no chromium found (apt-get install chromium, or set KEYCARD_CHROMIUM);" \
            "the browser test will fail" >&2
    else
        export KEYCARD_CHROMIUM
    fi
fi

exec cargo test --workspace "$@"
