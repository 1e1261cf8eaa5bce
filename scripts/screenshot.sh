#!/usr/bin/env bash
# The README's picture of the web page, made anew: the demo capture replayed into a pipeline
# with the web sink, rendered by headless Chromium. Run after `pip install -e .`:
#     bash scripts/screenshot.sh            (writes docs/web-page.png)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v chromium >/dev/null || { echo "needs Debian's chromium" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill "$bridge" 2>/dev/null || true; rm -rf "$work"' EXIT
port=18765
cat >"$work/pipeline.toml" <<TOML
[status]
file = "$work/status.json"
[buses.battery]
interface = "replay"
path = "$PWD/examples/captures/lynk2-sample.log"
loop = true
[buses.inverter]
interface = "virtual"
channel = "screenshot"
[sources.lynk]
type = "discover-lynk2"
bus = "battery"
[transforms.balancing]
type = "cell-balancing"
inputs = ["lynk"]
state_file = "$work/balancing.toml"
[sinks.inverter]
type = "pylontech"
inputs = ["balancing"]
bus = "inverter"
[sinks.web]
type = "web"
inputs = ["balancing"]
listen = "127.0.0.1:$port"
TOML
"${CANBRIDGE:-.venv/bin/canbridge}" run "$work/pipeline.toml" 2>"$work/log" &
bridge=$!
sleep 4
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/chromium" --virtual-time-budget=5000 --window-size=1000,1700 \
    --screenshot="$PWD/docs/web-page.png" "http://127.0.0.1:$port/" 2>/dev/null
echo "docs/web-page.png"
