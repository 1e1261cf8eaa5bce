"""live-floor: live.py's idle CPU with the libraries alone, the yardstick of its CPU figure.

    python benchmarks/live_floor.py [--runs N] [--secs S]

The least any bridge built on these libraries does at the LYNK II's rate, with nothing of
canbridge: a reader thread plays `data/lynk2-day.log` in real time (python-can's
`LogReader`, a sleep until each frame is due, as live.py's replay thread does) and hands
every frame to the main thread through a `queue.SimpleQueue`; the main thread decodes it
with cantools (`Database.decode_message`) and, once a second, encodes the six Pylontech
burst frames with cantools and sends them with python-can on a `virtual` bus. No MQTT, no
web page, no data log, no status file, no safety rules. CPU is measured per thread from the
kernel's nanosecond run time, after a 5 s warm-up, for S seconds (default 60), as live.py
measures canbridge.
"""

from __future__ import annotations

import subprocess
import sys
import time

import benchlib

WARMUP_SECS = 5.0

FLOOR = benchlib.LIBRARIES_ONLY + """
import queue, sys, threading, time

frames = queue.SimpleQueue()

def play():
    started, first = time.monotonic(), None
    for frame in can.LogReader(sys.argv[1]):
        first = frame.timestamp if first is None else first
        delay = started + frame.timestamp - first - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        frames.put(frame)

threading.Thread(target=play, daemon=True).start()
tick = time.monotonic() + 1.0
while True:
    try:
        take(frames.get(timeout=max(tick - time.monotonic(), 0.0)))
    except queue.Empty:
        pass
    if time.monotonic() >= tick:
        tick += 1.0
        send_burst()
"""


def one_run(capture: benchlib.Path, secs: float) -> tuple[float, float]:
    """(% of a core, of which the main thread in ms per second)."""
    process = subprocess.Popen([sys.executable, "-c", FLOOR, str(capture)])
    try:
        time.sleep(WARMUP_SECS)
        before, wall_before = benchlib.thread_cpu_seconds(process.pid), time.monotonic()
        time.sleep(secs)
        after = benchlib.thread_cpu_seconds(process.pid)
        window = time.monotonic() - wall_before
    finally:
        process.kill()
        process.wait()
    used = {tid: cpu - before[tid] for tid, cpu in after.items() if tid in before}
    return sum(used.values()) / window * 100.0, used.get(process.pid, 0.0) / window * 1e3


def main() -> None:
    parser = benchlib.arguments(__doc__, runs=3)
    parser.add_argument("--secs", type=float, default=60.0)
    args = parser.parse_args()
    capture = benchlib.day_capture()
    benchlib.compile_tree(benchlib.BENCH.parent)
    print(f"live-floor: {args.secs:g} s per run after {WARMUP_SECS:g} s warm-up; "
          f"{benchlib.machine()}")
    results = []
    for index in range(args.runs):
        results.append(one_run(capture, args.secs))
        cpu, main_thread = results[-1]
        print(f"  run {index + 1}: CPU {cpu:.3f} % of a core (main thread {main_thread:.2f} ms/s)")
    print(f"median of {args.runs}: CPU {benchlib.median([r[0] for r in results]):.3f} % of a "
          f"core (main thread {benchlib.median([r[1] for r in results]):.2f} ms/s)")


if __name__ == "__main__":
    main()
