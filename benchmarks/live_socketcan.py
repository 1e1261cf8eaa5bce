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
import uuid

import benchlib
from live import cpu_run, stand_in


def main() -> None:
    parser = benchlib.arguments(__doc__, runs=3)
    parser.add_argument("--secs", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds before measuring (an emulated machine starts slowly)")
    args = parser.parse_args()
    capture = benchlib.day_capture()
    link = f"cbbench{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "link", "add", "dev", link, "type", "vcan"], check=True)
    subprocess.run(["ip", "link", "set", link, "up"], check=True)
    print(f"live on SocketCAN: {args.secs:g} s per run after {args.warmup:g} s warm-up; "
          f"{benchlib.machine()}")
    figures: dict[str, list[dict[str, float]]] = {"socketcan": [], "replay": []}
    try:
        with benchlib.Mosquitto(benchlib.DATA / "broker-live-socketcan") as broker:
            for index in range(args.runs):
                player = subprocess.Popen(
                    [sys.executable, "-m", "can.player", "-i", "socketcan", "-c", link,
                     str(capture)], stdout=subprocess.DEVNULL)
                try:
                    figures["socketcan"].append(cpu_run(
                        index, {"interface": "socketcan", "channel": link}, broker.port,
                        args.secs, args.warmup))
                finally:
                    player.terminate()
                    player.wait()
                figures["replay"].append(cpu_run(index, stand_in(capture), broker.port,
                                                 args.secs, args.warmup))
                for kind, runs in figures.items():
                    print(f"  run {index + 1}, {kind}: {describe(runs[-1])}")
    finally:
        subprocess.run(["ip", "link", "del", link], check=False)
    medians = {kind: {key: benchlib.median([run[key] for run in runs]) for key in runs[0]}
               for kind, runs in figures.items()}
    for kind, median in medians.items():
        print(f"median of {args.runs}, {kind}: {describe(median)}")
    ratio = medians["socketcan"]["cpu_pct"] / medians["replay"]["cpu_pct"]
    print(f"socketcan / replay stand-in: {ratio:.2f} x")


def describe(run: dict[str, float]) -> str:
    return (f"{run['cpu_pct'] * 10:.2f} ms/s (engine thread {run['engine_ms_per_s']:.2f} ms/s, "
            f"other threads {run['others_ms_per_s']:.2f} ms/s)")


if __name__ == "__main__":
    main()
