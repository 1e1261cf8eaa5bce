"""live: the production pipeline for a minute in real time, at the LYNK II's nominal rate.

    python benchmarks/live.py [--runs N] [--secs S]

The battery bus replays benchmarks/data/lynk2-day.log at `speed = 1.0` (5 frames every
second, 5 more every 10 s, as the gateway sends them; the replay thread stands for the
socketcan reader, as this machine has no vcan); the inverter bus is `virtual`; mqtt
publishes to a local mosquitto; datalog writes its CSV. Each run is two children, one after
the other, each measured for S seconds (default 60) after a 5 s warm-up:

- The CPU child is the production pipeline as installed, with nothing of the benchmark's
  inside it (the status file on tmpfs, as /run on a Pi). CPU: the kernel's nanosecond run
  time of every thread (/proc/PID/task/TID/schedstat) over the window, as % of one core,
  with the engine thread's and the other threads' share in ms per second; peak RSS:
  ru_maxrss of the child (wait4).
- The timing child adds the instruments, which cost CPU of their own: the inverter bus
  recorded, and a benchmark-only sink (latency_probe.py) beside the real sinks.
  - Burst period jitter: |interval - period_secs| between consecutive bursts, from the
    recorded send times of 0x351 (the first frame of each burst), p50 and p99.
  - Frame-to-sink delay: for every update, from the moment the bus thread handed the frame
    to the engine until the last sink had it (see latency_probe.py), p50 and p99 of the
    updates after the warm-up, and the largest delay within the warm-up on its own
    (start-up work: connecting to the broker, announcing every signal to Home Assistant).
  - Start-up: from spawning `canbridge run` to the first Pylontech frame recorded.

Targets: CPU <= 0.12 % (the performance issue; 0.5 % before it), RSS <= 40 MB, jitter
p50/p99 <= 2/10 ms, delay p50/p99 <= 1/5 ms, first frame <= 0.10 s.
"""

from __future__ import annotations

import itertools
import shutil
import time
import tomllib
from pathlib import Path
from typing import Any

import benchlib

WARMUP_SECS = 5.0
PERIOD = 1.0
TARGETS = {"cpu_pct": 0.12, "peak_rss_mb": 40.0, "jitter_p50_ms": 2.0, "jitter_p99_ms": 10.0,
           "delay_p50_ms": 1.0, "delay_p99_ms": 5.0, "startup_s": 0.10}

def first_frames(record: Path, frame_id: int) -> list[float]:
    return [m.timestamp for m in benchlib.read_capture(record) if m.arbitration_id == frame_id]


def timing_run(index: int, capture: Path, port: int, secs: float) -> dict[str, float]:
    """The production pipeline with the benchmark's instruments: the inverter bus recorded
    (burst times), the latency probe beside the sinks (delays)."""
    folder = benchlib.DATA / f"live-{index}"
    battery = stand_in(capture)
    probe = {"type": "latency-probe", "inputs": ["balancing"],
             "path": str(folder / "delays.txt")}
    pipeline = benchlib.write_pipeline(folder, battery, port=port, record_inverter=True,
                                     sinks={"probe": probe})
    child = benchlib.Child(pipeline, log=folder / "canbridge.log", env=benchlib.probe_env())
    time.sleep(WARMUP_SECS + secs)
    child.interrupt()
    run = child.reap()
    if run.exit_code != 0:
        raise SystemExit(f"canbridge exited with {run.exit_code}:\n{run.stderr[-3000:]}")
    bursts = first_frames(folder / "inverter.log", 0x351)
    jitter = [abs(b - a - PERIOD) * 1e3 for a, b in itertools.pairwise(bursts)]
    pairs = [tuple(map(float, line.split()))
             for line in (folder / "delays.txt").read_text().splitlines()]
    first = pairs[0][0]
    # Start-up (connecting, announcing to Home Assistant) is reported apart from the window.
    delays = [d * 1e3 for t, d in pairs if t - first >= WARMUP_SECS]
    startup_delays = [d * 1e3 for t, d in pairs if t - first < WARMUP_SECS]
    return {
        "jitter_p50_ms": benchlib.percentile(jitter, 50),
        "jitter_p99_ms": benchlib.percentile(jitter, 99),
        "jitter_max_ms": max(jitter),
        "delay_p50_ms": benchlib.percentile(delays, 50),
        "delay_p99_ms": benchlib.percentile(delays, 99),
        "delay_max_ms": max(delays),
        "warmup_delay_max_ms": max(startup_delays),
        "startup_s": bursts[0] - run.started,
        "bursts": len(bursts),
        "updates": len(delays),
    }


def stand_in(capture: Path) -> dict[str, Any]:
    """The battery bus of a live run here: the capture replayed in real time."""
    return {"interface": "replay", "path": str(capture), "speed": 1.0}


def cpu_run(index: int, battery: dict[str, Any], port: int, secs: float,
            warmup: float = WARMUP_SECS) -> dict[str, float]:
    """The production pipeline as installed, nothing of the benchmark's inside it: no
    recording, no probe, the status file on tmpfs (/run on a Pi)."""
    folder = benchlib.DATA / f"live-cpu-{index}-{battery['interface']}"
    pipeline = benchlib.write_pipeline(folder, battery, port=port, status_on_tmpfs=True)
    child = benchlib.Child(pipeline, log=folder / "canbridge.log")
    time.sleep(warmup)
    before, wall_before = child.thread_cpu_seconds(), time.monotonic()
    time.sleep(secs)
    after = child.thread_cpu_seconds()
    window = time.monotonic() - wall_before
    engine_thread = child.pid
    child.interrupt()
    run = child.reap()
    status = Path(tomllib.loads(pipeline.read_text())["status"]["file"])
    if status.parent != folder:
        shutil.rmtree(status.parent, ignore_errors=True)
    if run.exit_code != 0:
        raise SystemExit(f"canbridge exited with {run.exit_code}:\n{run.stderr[-3000:]}")
    used = {tid: cpu - before[tid] for tid, cpu in after.items() if tid in before}
    return {
        "cpu_pct": sum(used.values()) / window * 100.0,
        "engine_ms_per_s": used.get(engine_thread, 0.0) / window * 1e3,
        "others_ms_per_s": (sum(used.values()) - used.get(engine_thread, 0.0)) / window * 1e3,
        "peak_rss_mb": run.peak_rss_mb,
    }


def describe(r: dict[str, float]) -> str:
    return (f"CPU {r['cpu_pct']:.3f} % of a core (engine thread {r['engine_ms_per_s']:.2f} ms/s, "
            f"other threads {r['others_ms_per_s']:.2f} ms/s), peak RSS "
            f"{r['peak_rss_mb']:.1f} MB, "
            f"jitter p50 {r['jitter_p50_ms']:.2f} / p99 {r['jitter_p99_ms']:.2f} / max "
            f"{r['jitter_max_ms']:.2f} ms ({r['bursts']:.0f} bursts), delay p50 "
            f"{r['delay_p50_ms']:.3f} / p99 {r['delay_p99_ms']:.3f} / max "
            f"{r['delay_max_ms']:.3f} ms ({r['updates']:.0f} updates; in the warm-up at most "
            f"{r['warmup_delay_max_ms']:.1f} ms), "
            f"first frame {r['startup_s']:.2f} s after spawn")


def main() -> None:
    parser = benchlib.arguments(__doc__, runs=3)
    parser.add_argument("--secs", type=float, default=60.0)
    args = parser.parse_args()
    capture = benchlib.day_capture()
    print(f"live: {args.secs:g} s per run after {WARMUP_SECS:g} s warm-up; {benchlib.machine()}")
    results = []
    with benchlib.Mosquitto(benchlib.DATA / "broker-live") as broker:
        for index in range(args.runs):
            results.append(cpu_run(index, stand_in(capture), broker.port, args.secs)
                           | timing_run(index, capture, broker.port, args.secs))
            print(f"  run {index + 1}: {describe(results[-1])}")
    med = {key: benchlib.median([r[key] for r in results]) for key in results[0]}
    print(f"median of {len(results)}: {describe(med)}")
    print("targets: " + "; ".join(f"{key} <= {limit:g} {'met' if med[key] <= limit else 'NOT met'}"
                                  for key, limit in TARGETS.items()))


if __name__ == "__main__":
    main()
