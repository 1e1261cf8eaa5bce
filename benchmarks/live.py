"""live: the production pipeline for a minute in real time, at the LYNK II's nominal rate.

    python benchmarks/live.py [--runs N] [--secs S]

The battery bus replays benchmarks/data/lynk2-day.log at `speed = 1.0` (5 frames every
second, 5 more every 10 s, as the gateway sends them); the inverter bus is `virtual` and
recorded; mqtt publishes to a local mosquitto; datalog writes its CSV. A benchmark-only sink
(latency_probe.py) sits beside the real sinks. Per run, after a 5 s warm-up and for S
seconds (default 60):

- CPU: user + system time of the canbridge process (all threads, /proc/PID/stat) over the
  measured window, as % of one core; peak RSS: ru_maxrss of the child (wait4).
- Burst period jitter: |interval - period_secs| between consecutive bursts, from the
  recorded send times of 0x351 (the first frame of each burst), p50 and p99.
- Frame-to-sink delay: for every update, from the moment the bus thread handed the frame
  to the engine until the last sink had it (see latency_probe.py), p50 and p99 of the
  updates after the warm-up, and the largest delay within the warm-up on its own (start-up
  work: connecting to the broker, announcing every signal to Home Assistant).
- Start-up: from spawning `canbridge run` to the first Pylontech frame recorded.

Targets: CPU <= 0.12 % (the performance issue; 0.5 % before it), RSS <= 40 MB, jitter
p50/p99 <= 2/10 ms, delay p50/p99 <= 1/5 ms, first frame <= 0.10 s.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import benchlib

WARMUP_SECS = 5.0
PERIOD = 1.0
TARGETS = {"cpu_pct": 0.12, "peak_rss_mb": 40.0, "jitter_p50_ms": 2.0, "jitter_p99_ms": 10.0,
           "delay_p50_ms": 1.0, "delay_p99_ms": 5.0, "startup_s": 0.10}

def first_frames(record: Path, frame_id: int) -> list[float]:
    return [m.timestamp for m in benchlib.read_capture(record) if m.arbitration_id == frame_id]


def one_run(index: int, capture: Path, port: int, secs: float) -> dict[str, float]:
    folder = benchlib.DATA / f"live-{index}"
    battery = {"interface": "replay", "path": str(capture), "speed": 1.0}
    probe = {"type": "latency-probe", "inputs": ["balancing"],
             "path": str(folder / "delays.txt")}
    pipeline = benchlib.write_pipeline(folder, battery, port=port, record_inverter=True,
                                     sinks={"probe": probe})
    child = benchlib.Child(pipeline, log=folder / "canbridge.log", env=benchlib.probe_env())
    time.sleep(WARMUP_SECS)
    cpu_before, wall_before = child.cpu_seconds(), time.monotonic()
    time.sleep(secs)
    cpu = child.cpu_seconds() - cpu_before
    window = time.monotonic() - wall_before
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
        "cpu_pct": cpu / window * 100.0,
        "peak_rss_mb": run.peak_rss_mb,
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


def describe(r: dict[str, float]) -> str:
    return (f"CPU {r['cpu_pct']:.2f} % of a core, peak RSS {r['peak_rss_mb']:.1f} MB, "
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
            results.append(one_run(index, capture, broker.port, args.secs))
            print(f"  run {index + 1}: {describe(results[-1])}")
    med = {key: benchlib.median([r[key] for r in results]) for key in results[0]}
    print(f"median of {len(results)}: {describe(med)}")
    print("targets: " + "; ".join(f"{key} <= {limit:g} {'met' if med[key] <= limit else 'NOT met'}"
                                  for key, limit in TARGETS.items()))


if __name__ == "__main__":
    main()
