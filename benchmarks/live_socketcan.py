"""live on SocketCAN: live.py's CPU figure with the battery on a real socketcan bus.

    bash scripts/socketcan-vm.sh --run .venv/bin/python benchmarks/live_socketcan.py
    python benchmarks/live_socketcan.py [--runs N] [--secs S]     (as root, kernel with CAN)

live.py replays the capture in canbridge's own replay thread, standing in for the thread
that reads the socketcan bus on a Pi. This script measures what that stand-in leaves out:
the production pipeline as installed reads a vcan link that python-can's player (another
process, not counted) feeds with the day capture in real time. Runs alternate with the
stand-in, in the same machine and hour; each prints the CPU of all canbridge's threads and
of its engine thread. In scripts/socketcan-vm.sh's emulated machine every figure is many
times a real one: compare the two configurations, not a figure with live.py's.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from typing import Any

import benchlib

WARMUP_SECS = 10.0


def cpu_run(index: int, battery: dict[str, Any], port: int, secs: float) -> tuple[float, float]:
    """(all threads, engine thread) in ms of CPU per second."""
    folder = benchlib.DATA / f"live-socketcan-{index}-{battery['interface']}"
    pipeline = benchlib.write_pipeline(folder, battery, port=port, status_on_tmpfs=True)
    child = benchlib.Child(pipeline, log=folder / "canbridge.log")
    time.sleep(WARMUP_SECS)
    before, started = child.thread_cpu_seconds(), time.monotonic()
    time.sleep(secs)
    after = child.thread_cpu_seconds()
    window = time.monotonic() - started
    engine_thread = child.pid
    child.interrupt()
    run = child.reap()
    if run.exit_code != 0:
        raise SystemExit(f"canbridge exited with {run.exit_code}:\n{run.stderr[-3000:]}")
    used = {tid: cpu - before[tid] for tid, cpu in after.items() if tid in before}
    return sum(used.values()) / window * 1e3, used.get(engine_thread, 0.0) / window * 1e3


def main() -> None:
    parser = benchlib.arguments(__doc__, runs=3)
    parser.add_argument("--secs", type=float, default=30.0)
    args = parser.parse_args()
    capture = benchlib.day_capture()
    link = f"cbbench{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "link", "add", "dev", link, "type", "vcan"], check=True)
    subprocess.run(["ip", "link", "set", link, "up"], check=True)
    print(f"live on SocketCAN: {args.secs:g} s per run after {WARMUP_SECS:g} s warm-up; "
          f"{benchlib.machine()}")
    figures: dict[str, list[tuple[float, float]]] = {"socketcan": [], "replay": []}
    try:
        with benchlib.Mosquitto(benchlib.DATA / "broker-live-socketcan") as broker:
            for index in range(args.runs):
                player = subprocess.Popen(
                    [sys.executable, "-m", "can.player", "-i", "socketcan", "-c", link,
                     str(capture)], stdout=subprocess.DEVNULL)
                try:
                    figures["socketcan"].append(cpu_run(
                        index, {"interface": "socketcan", "channel": link}, broker.port,
                        args.secs))
                finally:
                    player.terminate()
                    player.wait()
                figures["replay"].append(cpu_run(
                    index, {"interface": "replay", "path": str(capture), "speed": 1.0},
                    broker.port, args.secs))
                for kind, runs in figures.items():
                    total, engine = runs[-1]
                    print(f"  run {index + 1}, {kind}: {total:.2f} ms/s (engine thread "
                          f"{engine:.2f} ms/s)")
    finally:
        subprocess.run(["ip", "link", "del", link], check=False)
    medians = {kind: (benchlib.median([r[0] for r in runs]), benchlib.median([r[1] for r in runs]))
               for kind, runs in figures.items()}
    for kind, (total, engine) in medians.items():
        print(f"median of {args.runs}, {kind}: {total:.2f} ms/s (engine thread {engine:.2f} ms/s)")
    print(f"socketcan / replay stand-in: {medians['socketcan'][0] / medians['replay'][0]:.2f} x")


if __name__ == "__main__":
    main()
