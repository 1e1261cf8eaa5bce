#!/usr/bin/env bash
# Everything the test suite needs, on a fresh Debian machine: Debian's mosquitto (the MQTT
# tests start their own broker on 127.0.0.1), shellcheck, openssl (test certificates) and
# chromium (the web page is tested in a real headless browser), a virtual environment with
# the package and its test extras; then ruff and pytest. Extra arguments go to pytest.
# Where this kernel has no SocketCAN (or this is not root), pytest skips the SocketCAN tests
# and scripts/socketcan-vm.sh runs them in a virtual machine instead (on x86_64).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "installing Debian packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
.venv/bin/pytest "$@"
if .venv/bin/python -c 'import sys; sys.path[:0] = ["tests"]
from test_socketcan import WHY_NOT; sys.exit(WHY_NOT is None)'; then
    if [ "$(uname -m)" = x86_64 ]; then
        bash scripts/socketcan-vm.sh -q
    else
        echo "the SocketCAN tests were skipped: run them as root (sudo .venv/bin/pytest" \
             "-m socketcan tests/test_socketcan.py); the VM needs x86_64"
    fi
fi
