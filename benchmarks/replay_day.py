"""replay-day: a whole day of LYNK II traffic through the production pipeline at full speed.

    python benchmarks/replay_day.py [--runs N] [--baseline DIR]

Generates benchmarks/data/lynk2-day.log once (see lynk2_day.py), starts a mosquitto on a
free loopback port, and runs `canbridge run` as a child process N times on the production
pipeline (discover-lynk2 -> glitch-filter -> cell-balancing -> pylontech on a `virtual`
inverter bus, mqtt, datalog) with the battery bus a replay at speed "max". Each run starts
fresh (no balancing state, no data log). Prints per run and the median: wall time of the
child process (start-up included), input frames/s, µs per input frame, output frames,
peak RSS. Targets (the performance issue): the day in <= 1.3 x the library floor
(library_floor.py; `--floor SECS` gives its figure), peak RSS <= 40 MB.

`--days N` replays the day N times over (the capture looped, its timestamps moving on:
N days of pipeline time) in one run and samples canbridge's RSS every 10 s of wall time:
memory must stay flat (the issue's 30-day check: `--days 30 --runs 1`).

`--baseline DIR` compares with another canbridge tree in the same sitting: DIR holds the
packages `canbridge` (with `canbridge/dbc`) and `canbridge_plugins`, put first on the
child's PYTHONPATH; runs alternate between the two, and both medians are printed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import benchlib

TARGET_FLOOR_RATIO = 1.3
TARGET_RSS_MB = 40.0
DAY_SECS = 86400
RSS_EVERY_SECS = 10.0


def capture_frames(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for _ in file)


def one_run(name: str, capture: Path, frames_in: int, port: int,
            env: dict[str, str] | None, production: Path = benchlib.PRODUCTION,
            days: int = 1) -> dict[str, float]:
    folder = benchlib.DATA / name
    battery = {"interface": "replay", "path": str(capture), "speed": "max", "loop": days > 1}
    pipeline = benchlib.write_pipeline(folder, battery, port=port, production=production)
    args = ("--duration", str(days * DAY_SECS)) if days > 1 else ()
    child = benchlib.Child(pipeline, *args, log=folder / "canbridge.log", env=env)
    samples = []
    while days > 1 and child.running():
        try:
            samples.append(child.rss_mb())
            child.process.wait(RSS_EVERY_SECS)
        except subprocess.TimeoutExpired:
            continue
        except (OSError, RuntimeError):
            break  # it has just ended
    run = child.reap()
    if run.exit_code != 0:
        raise SystemExit(f"canbridge exited with {run.exit_code}:\n{run.stderr[-3000:]}")
    if "balancing hold started" not in run.stderr:
        raise SystemExit("the day's climb to 100 % did not start a balancing hold")
    status = json.loads((folder / "status.json").read_text())
    components = status["components"]
    if samples:
        print(f"  RSS every {RSS_EVERY_SECS:g} s over {days} days: "
              + " ".join(f"{mb:.1f}" for mb in samples) + " MB")
    frames_in *= days
    return {
        "wall_s": run.wall,
        "cpu_s": run.cpu,
        "frames_per_s": frames_in / run.wall,
        "us_per_frame": run.wall / frames_in * 1e6,
        "frames_out": status["buses"]["inverter"]["frames_out"],
        "peak_rss_mb": run.peak_rss_mb,
        "mqtt_published": components["mqtt"]["published"],
        "datalog_rows": components["datalog"]["rows"],
        "errors": status["engine"]["errors"],
    }


def describe(r: dict[str, float]) -> str:
    return (f"{r['wall_s']:.2f} s wall ({r['cpu_s']:.2f} s CPU), {r['frames_per_s']:,.0f} "
            f"frames/s, {r['us_per_frame']:.1f} µs/frame, {r['frames_out']:.0f} frames out, "
            f"peak RSS {r['peak_rss_mb']:.1f} MB, {r['mqtt_published']:.0f} MQTT messages, "
            f"{r['datalog_rows']:.0f} log rows, {r['errors']:.0f} errors")


def medians(results: list[dict[str, float]]) -> dict[str, float]:
    return {key: benchlib.median([r[key] for r in results]) for key in results[0]}


def main() -> None:
    parser = benchlib.arguments(__doc__, runs=5)
    parser.add_argument("--days", type=int, default=1, help="days of pipeline time per run")
    parser.add_argument("--floor", type=float, metavar="SECS",
                        help="library_floor.py's day, for the ratio")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="another canbridge tree to compare with, run by run")
    args = parser.parse_args()
    capture = benchlib.day_capture()
    frames_in = capture_frames(capture)
    print(f"replay-day: {capture.name}, {frames_in} input frames; {benchlib.machine()}")
    configs: dict[str, tuple[dict[str, str] | None, Path]] = {
        "this tree": (None, benchlib.PRODUCTION)}
    if args.baseline is not None:
        benchlib.compile_tree(args.baseline.resolve())
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.baseline.resolve()),
                                                          env.get("PYTHONPATH")]))
        # An older tree may not know today's options: it runs its own example pipeline.
        own = args.baseline / "examples" / "pipeline.toml"
        configs["baseline"] = (env, own if own.is_file() else benchlib.PRODUCTION)
    results: dict[str, list[dict[str, float]]] = {label: [] for label in configs}
    with benchlib.Mosquitto(benchlib.DATA / "broker-replay-day") as broker:
        for index in range(args.runs):
            for number, (label, (env, production)) in enumerate(configs.items()):
                r = one_run(f"replay-day-{index}-{number}", capture, frames_in, broker.port, env,
                            production, args.days)
                results[label].append(r)
                print(f"  run {index + 1} ({label}): {describe(r)}")
    for label, runs in results.items():
        print(f"median of {len(runs)} ({label}): {describe(medians(runs))}")
    med = medians(results["this tree"])
    if "baseline" in results:
        base = medians(results["baseline"])
        print(f"this tree takes {med['wall_s'] / base['wall_s']:.2f} x the baseline's wall "
              f"time ({med['cpu_s'] / base['cpu_s']:.2f} x its CPU time)")
    per_day = med["wall_s"] / args.days
    rss_ok = "met" if med["peak_rss_mb"] <= TARGET_RSS_MB else "NOT met"
    floor = (f"{per_day / args.floor:.2f} x the floor of {args.floor:g} s: "
             f"{'met' if per_day <= TARGET_FLOOR_RATIO * args.floor else 'NOT met'}"
             if args.floor else "give --floor SECS (library_floor.py) to compare")
    print(f"targets: the day ({per_day:.2f} s) <= {TARGET_FLOOR_RATIO:g} x the library floor: "
          f"{floor}; peak RSS <= {TARGET_RSS_MB:g} MB {rss_ok}")


if __name__ == "__main__":
    main()
