"""start-up: from `canbridge run` to the first Pylontech frame on the inverter bus.

    python benchmarks/startup.py [--runs N]

Each run spawns `canbridge run` on the production pipeline (battery bus: the day capture
replayed at `speed = 1.0`, so the LYNK II's first burst is there at once, as from a
gateway that is already running; inverter bus `virtual` and recorded; local mosquitto),
waits for the first recorded frame and stops the child. The figure is the recorded send
time of that frame minus the time just before the spawn: interpreter start, imports,
configuration, opening buses, the first battery data and the first burst. Also printed:
the time to canbridge's "starting pipeline" log line (everything before the first frame
can arrive). The first run starts with an empty cache folder (no plugin index, no DBC
layouts: the first start after an install or an upgrade) and is printed on its own; the
median is of the runs after it, as every later start of an installed bridge. canbridge's
modules are byte-compiled first, as `pip install` leaves them. Also printed, as the floor
of any bridge built on python-can: the median time of `python -c "import can"` from spawn
to exit in the same interpreter and environment. Target: <= 0.10 s.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from datetime import datetime

import benchlib

TARGET_SECS = 0.10
WAIT_SECS = 10.0


def one_run(index: int, capture: benchlib.Path, port: int) -> tuple[float, float]:
    folder = benchlib.DATA / f"startup-{index}"
    battery = {"interface": "replay", "path": str(capture), "speed": 1.0}
    pipeline = benchlib.write_pipeline(folder, battery, port=port, record_inverter=True)
    record = folder / "inverter.log"
    child = benchlib.Child(pipeline, log=folder / "canbridge.log")
    deadline = time.monotonic() + WAIT_SECS
    while not (record.exists() and record.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.05)  # the record is flushed every 0.5 s; its timestamps are exact
    child.interrupt()
    run = child.reap()
    frames = benchlib.read_capture(record) if record.exists() else []
    if run.exit_code != 0 or not frames:
        raise SystemExit(f"no Pylontech frame within {WAIT_SECS:g} s (exit {run.exit_code}):\n"
                         f"{run.stderr[-3000:]}")
    match = re.search(r"^(\S+ \S+) INFO canbridge: canbridge \S+ starting", run.stderr, re.M)
    ready = (datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - run.started
             if match else float("nan"))
    return frames[0].timestamp - run.started, ready


def import_can_secs(runs: int) -> float:
    """Spawn to exit of `python -c "import can"`: what python-can costs before any bridge."""
    times = []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "import can"], check=True)
        times.append(time.monotonic() - started)
    return benchlib.median(times)


def main() -> None:
    parser = benchlib.arguments(__doc__, runs=7)
    args = parser.parse_args()
    capture = benchlib.day_capture()
    print(f"start-up; {benchlib.machine()}")
    firsts, readies = [], []
    shutil.rmtree(benchlib.CACHE, ignore_errors=True)
    with benchlib.Mosquitto(benchlib.DATA / "broker-startup") as broker:
        for index in range(args.runs + 1):
            first, ready = one_run(index, capture, broker.port)
            label = "cold caches" if index == 0 else f"run {index}"
            print(f"  {label}: first Pylontech frame {first:.3f} s after spawn "
                  f"(pipeline starting at {ready:.3f} s)")
            if index:
                firsts.append(first)
                readies.append(ready)
    first, ready = benchlib.median(firsts), benchlib.median(readies)
    print(f"median of {args.runs}: first frame {first:.3f} s, pipeline starting at {ready:.3f} s")
    print(f"the interpreter and `import can` alone: {import_can_secs(args.runs):.3f} s "
          f"(median of {args.runs})")
    print(f"target: first frame <= {TARGET_SECS:g} s "
          f"{'met' if first <= TARGET_SECS else 'NOT met'}")


if __name__ == "__main__":
    main()
