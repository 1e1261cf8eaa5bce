"""slow-pi: the live pipeline squeezed onto one busy core, as on a Pi doing other work.

    python benchmarks/slow_pi.py [--secs S] [--cpu N] [--nice N]

The production pipeline (as live.py runs it: the day capture replayed at `speed = 1.0`, a
recorded `virtual` inverter bus, a local mosquitto, the data log) runs pinned to CPU N
(`taskset`), sharing it with a busy loop pinned there too that never sleeps. The busy loop
has the higher priority: canbridge runs `nice`d by N steps (default 5: the loop then gets
about three times canbridge's share of the core whenever both want it). After a 5 s warm-up
and for S seconds (default 60), the recorded send times of 0x351, the first frame of each
burst, give the burst cadence: the p99 of the intervals and the largest one, which must stay
under 1.05 s (the period is 1 s).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import benchlib

PERIOD = 1.0
WARMUP_SECS = 5.0
TARGET_GAP_SECS = 1.05
BUSY = "while True:\n    pass\n"


def main() -> None:
    parser = benchlib.arguments(__doc__)
    parser.add_argument("--secs", type=float, default=60.0)
    parser.add_argument("--cpu", type=int, default=0, help="the core both run on")
    parser.add_argument("--nice", type=int, default=5,
                        help="how many steps canbridge is below the busy loop")
    args = parser.parse_args()
    capture = benchlib.day_capture()
    print(f"slow-pi: {args.secs:g} s on CPU {args.cpu}, shared with a busy loop, canbridge "
          f"nice {args.nice}; {benchlib.machine()}")
    folder = benchlib.DATA / "slow-pi"
    battery = {"interface": "replay", "path": str(capture), "speed": 1.0}
    pin = ["taskset", "-c", str(args.cpu)]
    busy = subprocess.Popen([*pin, sys.executable, "-c", BUSY])
    try:
        with benchlib.Mosquitto(benchlib.DATA / "broker-slow-pi") as broker:
            pipeline = benchlib.write_pipeline(folder, battery, port=broker.port,
                                               record_inverter=True)
            child = benchlib.Child(pipeline, log=folder / "canbridge.log",
                                   prefix=[*pin, "nice", "-n", str(args.nice)])
            time.sleep(WARMUP_SECS + args.secs)
            child.interrupt()
            run = child.reap()
    finally:
        busy.kill()
        busy.wait()
    if run.exit_code != 0:
        raise SystemExit(f"canbridge exited with {run.exit_code}:\n{run.stderr[-3000:]}")
    bursts = [m.timestamp for m in benchlib.read_capture(folder / "inverter.log")
              if m.arbitration_id == 0x351]
    window = [t for t in bursts if t - bursts[0] >= WARMUP_SECS]
    intervals = [b - a for a, b in itertools.pairwise(window)]
    p99, largest = benchlib.percentile(intervals, 99), max(intervals)
    print(f"  {len(window)} bursts after the warm-up: interval p50 "
          f"{benchlib.percentile(intervals, 50):.4f} s, p99 {p99:.4f} s, largest {largest:.4f} s "
          f"(CPU {run.cpu:.2f} s in all)")
    print(f"target: largest interval < {TARGET_GAP_SECS:g} s "
          f"{'met' if largest < TARGET_GAP_SECS else 'NOT met'}")


if __name__ == "__main__":
    main()
