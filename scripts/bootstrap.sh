#!/usr/bin/env bash
# Create .venv with herald and everything its tests, lint and demo need, on a fresh Debian
# machine with Python 3.11 or newer. Idempotent: reruns only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.herald-installed

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "bootstrap: herald needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
    exit 1
}

# Debian splits venv and pip out of python3; install them when we are allowed to.
if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
    else
        echo "bootstrap: '$PYTHON -m venv' is unavailable; install python3-venv" >&2
        exit 1
    fi
fi

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ -x "$VENV/bin/python" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test,dev]'
touch "$STAMP"
echo "bootstrap: $VENV ready ($("$VENV/bin/python" --version))"
