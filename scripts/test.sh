#!/usr/bin/env bash
# Runs every test of the workspace, including the ones against real peers:
# DistKV's own Python client (a venv with distkv 0.65 is created once),
# schemathesis against the REST API (its own venv, created once) and the
# login page in headless Chromium (playwright-core, installed once by npm).
# What is missing is set up first, so this works on a fresh machine:
# Debian's chromium, Node.js and npm, and Python's venv module come from
# apt-get (as root, or through sudo). KEYCARD_SKIP_PEERS=1 skips the peer
# tests and all of that set-up. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# apt-get install PACKAGES…, retried (mirrors fail now and then); as root,
# or through sudo; otherwise says in one line what to run.
apt_install() {
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "error: the peer tests need $*: run \`apt-get install $*\` as root," \
                "or set KEYCARD_SKIP_PEERS=1 to skip them" >&2
            exit 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: the peer tests need $* (Debian's packages), and this machine has no" \
            "apt-get: install them, or set KEYCARD_SKIP_PEERS=1 to skip those tests" >&2
        exit 1
    fi
    local log
    log=$(mktemp)
    export DEBIAN_FRONTEND=noninteractive
    for try in 1 2 3; do
        if "${sudo[@]}" apt-get update -q >"$log" 2>&1 \
            && "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1; then
            rm -f "$log"
            return 0
        fi
        echo "apt-get install $* failed (try $try):"
        tail -n 5 "$log"
        sleep $((try * 5))
    done
    echo "error: could not install $* (log: $log)" >&2
    exit 1
}

if [ -n "${KEYCARD_SKIP_PEERS:-}" ]; then
    exec cargo test --workspace "$@"
fi

# Python venvs need the venv module (Debian ships it apart).
if ! python3 -c "import ensurepip, venv" 2>/dev/null; then
    echo "== installing Python's venv module (the peer venvs)"
    apt_install python3-venv
fi

venv=${KEYCARD_VENV:-.venv-distkv}
if ! "$venv/bin/python" -c "import distkv, trio, scramp, pyotp, prometheus_client" 2>/dev/null; then
    echo "== creating $venv (DistKV 0.65 client, scramp, pyotp and prometheus_client, used by the compatibility tests)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        distkv==0.65.0 moat-util==0.35.0 greenback trio==0.22.2 async_generator scramp==1.5.0 \
        pyotp==2.9.0 prometheus_client==0.21.1
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

# The browser test (crates/keycard/tests/browser.rs) drives Debian's
# chromium (or the browser KEYCARD_CHROMIUM names) with playwright-core
# from npm, pinned in tests/browser/package-lock.json, installed with
# `npm ci` into KEYCARD_BROWSER_NODE_DIR (default tests/browser) and
# reused while the lock file is unchanged.
if [ -z "${KEYCARD_CHROMIUM:-}" ]; then
    if ! command -v chromium >/dev/null 2>&1; then
        echo "== installing Debian's chromium (the browser test)"
        apt_install chromium
    fi
    KEYCARD_CHROMIUM="$(command -v chromium)"
fi
export KEYCARD_CHROMIUM
if ! command -v npm >/dev/null 2>&1; then
    echo "== installing Node.js and npm (the browser test)"
    apt_install nodejs npm
fi
src="$(cd tests/browser && pwd)"
nodedir=${KEYCARD_BROWSER_NODE_DIR:-tests/browser}
mkdir -p "$nodedir"
nodedir="$(cd "$nodedir" && pwd)"
stamp="$nodedir/node_modules/.keycard-package-lock.json"
if ! cmp -s "$src/package-lock.json" "$stamp" \
    || [ ! -f "$nodedir/node_modules/playwright-core/package.json" ]; then
    echo "== npm ci in $nodedir (playwright-core, used by the browser test)"
    if [ "$nodedir" != "$src" ]; then
        cp "$src/package.json" "$src/package-lock.json" "$nodedir/"
    fi
    (cd "$nodedir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    cp "$src/package-lock.json" "$stamp"
fi
KEYCARD_BROWSER_NODE_DIR=$nodedir
export KEYCARD_BROWSER_NODE_DIR
echo "== browser: $("$KEYCARD_CHROMIUM" --version 2>/dev/null || echo "$KEYCARD_CHROMIUM"), node $(node --version)"

exec cargo test --workspace "$@"
