"""replay-day: a whole day of LYNK II traffic through the production pipeline at full speed.

    python benchmarks/replay_day.py [--runs N] [--baseline DIR]

Generates benchmarks/data/lynk2-day.log once (see lynk2_day.py), starts a mosquitto on a
free loopback port, and runs `canbridge run` as a child process N times on the production
pipeline (discover-lynk2 -> glitch-filter -> cell-balancing -> pylontech on a `virtual`
inverter bus, mqtt, datalog) with the battery bus a replay at speed "max". Each run starts
fresh (no balancing state, no data log). Prints per run and the median: wall time of the
child process (start-up included), input frames/s, µs per input frame, output frames,
peak RSS. Targets: the day in <= 10 s, peak RSS <= 80 MB.

`--baseline DIR` compares with another canbridge tree in the same sitting: DIR holds the
packages `canbridge` (with `canbridge/dbc`) and `canbridge_plugins`, put first on the
child's PYTHONPATH; runs alternate between the two, and both medians are printed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import benchlib
import lynk2_day

TARGET_WALL_SECS = 10.0
TARGET_RSS_MB = 80.0


def capture_frames(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for _ in file)


def one_run(name: str, capture: Path, frames_in: int, port: int,
            env: dict[str, str] | None, production: Path = benchlib.PRODUCTION
            ) -> dict[str, float]:
    folder = benchlib.DATA / name
    battery = {"interface": "replay", "path": str(capture), "speed": "max"}
    pipeline = benchlib.write_pipeline(folder, battery, port=port, production=production)
    run = benchlib.run_canbridge(pipeline, log=folder / "canbridge.log", env=env)
    if run.exit_code != 0:
        raise SystemExit(f"canbridge exited with {run.exit_code}:\n{run.stderr[-3000:]}")
    if "balancing hold started" not in run.stderr:
        raise SystemExit("the day's climb to 100 % did not start a balancing hold")
    status = json.loads((folder / "status.json").read_text())
    components = status["components"]
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="another canbridge tree to compare with, run by run")
    args = parser.parse_args()
    capture = lynk2_day.ensure(benchlib.DATA / "lynk2-day.log")
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
                            production)
                results[label].append(r)
                print(f"  run {index + 1} ({label}): {describe(r)}")
    for label, runs in results.items():
        print(f"median of {len(runs)} ({label}): {describe(medians(runs))}")
    med = medians(results["this tree"])
    if "baseline" in results:
        base = medians(results["baseline"])
        print(f"this tree takes {med['wall_s'] / base['wall_s']:.2f} x the baseline's wall "
              f"time ({med['cpu_s'] / base['cpu_s']:.2f} x its CPU time)")
    wall_ok = "met" if med["wall_s"] <= TARGET_WALL_SECS else "NOT met"
    rss_ok = "met" if med["peak_rss_mb"] <= TARGET_RSS_MB else "NOT met"
    print(f"targets: day <= {TARGET_WALL_SECS:g} s {wall_ok}; "
          f"peak RSS <= {TARGET_RSS_MB:g} MB {rss_ok}")


if __name__ == "__main__":
    main()
