"""Soak: the production pipeline in real time with its broker restarted and the battery silent.

Not in the default run (marked `soak`). Ten minutes by default; `CANBRIDGE_SOAK_SECS=120`
runs a short version (restarts every tenth of the run, the silences at 30 % and 70 %):

    CANBRIDGE_SOAK_SECS=120 .venv/bin/pytest -m soak tests/test_soak.py

The battery is a replay of the benchmark day capture at `speed = 1.0` with two 20 s holes;
the mosquitto is restarted every minute (every tenth of the run). Checked from canbridge's
own records of both buses: a clean exit, no component error, each silence reaches the safe
state (0x35C = 00 00 and the 0x359 system-error bit) within stale_after_secs + period of the
last battery frame and leaves it when the battery is back, the inverter never goes without
a burst for more than 1.5 periods, MQTT reconnects after every restart, and RSS grows by at
most 2 MB after the warm-up.
"""

from __future__ import annotations

import importlib
import itertools
import os
import time
from pathlib import Path

import can
import pytest
from broker import Mosquitto
from conftest import REPO

SOAK_SECS = float(os.environ.get("CANBRIDGE_SOAK_SECS", "600"))
SILENCE_SECS = 20.0
STALE_AFTER = 5.0
PERIOD = 1.0
SCHEDULING_SLACK = 0.05
"""Seconds a burst may go out after its due time on a busy machine."""
RECORD_NOISE = 0.001
"""Seconds of noise in recorded times (monotonic pipeline time converted to Unix time)."""
RSS_GROWTH_MB = 2.0
SAMPLE_EVERY = 2.0

pytestmark = pytest.mark.soak


def bursts(record: Path) -> list[tuple[float, dict[int, bytes]]]:
    """(time of 0x351, {id: data}) for each burst the inverter received."""
    out: list[tuple[float, dict[int, bytes]]] = []
    for msg in can.LogReader(str(record)):
        if msg.arbitration_id == 0x351:
            out.append((msg.timestamp, {}))
        if out:
            out[-1][1][msg.arbitration_id] = bytes(msg.data)
    return out


def is_safe(burst: dict[int, bytes]) -> bool:
    return burst[0x35C] == b"\0\0" and bool(burst[0x359][1] & 0b1000)


def check_safe_state(received: list[can.Message], sent: list[tuple[float, dict[int, bytes]]],
                     silences: list[tuple[float, float]]) -> None:
    """Bursts never pause; each silence gives the safe state on time and fresh data ends it;
    no safe burst anywhere else."""
    battery_times = [m.timestamp for m in received]
    limits_times = [m.timestamp for m in received if m.arbitration_id == 0x351]
    times = [at for at, _ in sent]
    assert max(b - a for a, b in itertools.pairwise(times)) <= 1.5 * PERIOD
    first_battery = battery_times[0]
    windows = []
    for gap_start, length in silences:
        last = max(t for t in battery_times if t < first_battery + gap_start)
        back = min(t for t in battery_times if t > last + 1.0)
        assert back - last >= length
        safe = [at for at, burst in sent if last < at < back and is_safe(burst)]
        assert safe, f"no safe burst after the battery went silent at {last}"
        assert safe[0] <= last + STALE_AFTER + PERIOD + SCHEDULING_SLACK, safe[0] - last
        assert all(is_safe(burst) for at, burst in sent if safe[0] <= at < back)
        after = [burst for at, burst in sent if at > back + PERIOD + SCHEDULING_SLACK]
        assert after and not is_safe(after[0]), "the safe state did not end"
        # Not safe before the oldest needed signal (0x351 starts each battery burst) is stale.
        last_limits = max(t for t in limits_times if t <= last)
        windows.append((last_limits + STALE_AFTER - RECORD_NOISE,
                        back + PERIOD + SCHEDULING_SLACK))
    assert [at for at, burst in sent if is_safe(burst)
            and not any(low <= at <= high for low, high in windows)] == []


def test_soak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # their capture and pipeline
    benchlib = importlib.import_module("benchlib")
    lynk2_day = importlib.import_module("lynk2_day")
    silences = [(round(SOAK_SECS * 0.3), SILENCE_SECS), (round(SOAK_SECS * 0.7), SILENCE_SECS)]
    capture = tmp_path / "battery.log"
    lynk2_day.write(capture, hours=(SOAK_SECS + 30) / 3600, gaps=silences)
    restart_every = SOAK_SECS / 10
    warmup = min(60.0, SOAK_SECS / 5)
    with Mosquitto(tmp_path / "mosquitto") as broker:
        battery = {"interface": "replay", "path": str(capture), "speed": 1.0,
                   "record": str(tmp_path / "run" / "battery.log")}
        pipeline = benchlib.write_pipeline(tmp_path / "run", battery, port=broker.port,
                                           record_inverter=True, stale_after=STALE_AFTER)
        child = benchlib.Child(pipeline, "--duration", str(SOAK_SECS),
                               log=tmp_path / "canbridge.log")
        start = time.monotonic()
        rss: list[tuple[float, float]] = []
        restarts = 0
        while child.running():
            elapsed = time.monotonic() - start
            if elapsed >= (restarts + 1) * restart_every and elapsed < SOAK_SECS - 5:
                broker.restart()
                restarts += 1
            try:
                rss.append((elapsed, child.rss_mb()))
            except (OSError, RuntimeError):
                break  # exiting
            time.sleep(SAMPLE_EVERY)
        run = child.reap()
    log = run.stderr
    assert run.exit_code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert log.count("stopped:") == 1 and ", 0 component errors" in log, log[-3000:]
    assert log.count("connected to MQTT broker") >= restarts + 1, log[-3000:]

    sent = bursts(tmp_path / "run" / "inverter.log")
    check_safe_state(list(can.LogReader(str(tmp_path / "run" / "battery.log"))), sent, silences)

    settled = [mb for at, mb in rss if at >= warmup]
    assert settled, rss
    growth = max(settled) - settled[0]
    print(f"soak {SOAK_SECS:g} s: {restarts} broker restarts, {len(sent)} bursts, RSS "
          f"{settled[0]:.1f} MB after {warmup:g} s warm-up, {max(settled):.1f} MB at most "
          f"(growth {growth:.2f} MB), peak {run.peak_rss_mb:.1f} MB, CPU {run.cpu:.2f} s")
    assert growth <= RSS_GROWTH_MB
