"""The pylontech sink inside whole pipelines, run with `canbridge run` as a user would.

Replays at speed "max" run on the capture's clock, so the recorded inverter bus shows the
exact pipeline times of every burst.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterable
from pathlib import Path

import can
import pytest
import tomli_w
from canbridge_plugins.pylontech import BURST_IDS, PylontechSink
from conftest import REPO, SAMPLE
from test_pylontech import NO_REPORT_BURST, NORMAL_BURST, SAFE_BURST, decode_burst, hexes

from canbridge import Clock, Update
from canbridge.testing import build, run_timers, virtual_bus

T0 = 1_700_000_000.0


def canbridge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "canbridge", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


def write_pipeline(folder: Path, battery: Path, inverter: dict, *, sink: dict | None = None,
                   glitch: bool = False) -> Path:
    first = "glitch" if glitch else "lynk"
    doc: dict = {
        "status": {"file": str(folder / "status.json")},
        "buses": {"battery": {"interface": "replay", "path": str(battery), "speed": "max"},
                  "inverter": {"record": str(folder / "inverter.log"), **inverter}},
        "sources": {"lynk": {"type": "discover-lynk2", "bus": "battery"}},
        "sinks": {"inverter": {"type": "pylontech", "inputs": [first], "bus": "inverter",
                               **(sink or {})}},
    }
    if glitch:
        doc["transforms"] = {"glitch": {"type": "glitch-filter", "inputs": ["lynk"],
                                        "signal": "voltage", "below": 48.0, "samples": 3}}
    path = folder / "pipeline.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def virtual_inverter() -> dict:
    return {"interface": "virtual", "channel": f"pylontech-e2e-{uuid.uuid4()}"}


def recorded(path: Path) -> list[can.Message]:
    return list(can.LogReader(str(path)))


def bursts_of(frames: Iterable[can.Message]) -> dict[float, dict[int, bytes]]:
    """Frames the sink sent, by the time of each burst's first frame; every burst must be
    the six frames in ID order (live, each frame has its own timestamp)."""
    out: dict[float, dict[int, bytes]] = {}
    burst: dict[int, bytes] = {}
    for msg in frames:
        if msg.is_rx:
            continue
        if msg.arbitration_id == BURST_IDS[0]:
            burst = out.setdefault(round(msg.timestamp, 6), {})
        burst[msg.arbitration_id] = bytes(msg.data)
    assert all(list(burst) == list(BURST_IDS) for burst in out.values())
    return out


def test_the_sample_capture_gives_the_golden_bytes_once_a_second(tmp_path):
    pipeline = write_pipeline(tmp_path, SAMPLE, virtual_inverter())
    result = canbridge("run", str(pipeline))
    assert result.returncode == 0, result.stderr
    bursts = bursts_of(recorded(tmp_path / "inverter.log"))
    # The first complete data set: the capture's first 0x356 (its first frame + 4 ms). The
    # first burst goes out then, the others once a second after it, to the capture's end.
    # The first 0x35A comes 0.5 ms after the first burst: until then no direction is enabled.
    first = 1745512155.004
    assert sorted(bursts) == [round(first + n, 6) for n in range(8)]
    assert hexes(bursts[first]) == NO_REPORT_BURST
    assert hexes(bursts[round(first + 1, 6)])[0x351] == NORMAL_BURST[0x351]
    assert [hexes(b)[0x35C] for _, b in sorted(bursts.items())] == ["00 00"] + ["C0 00"] * 7
    status = json.loads((tmp_path / "status.json").read_text())["components"]["inverter"]
    assert (status["state"], status["frames_out"], status["errors"]) == ("ok", 48, 0)


def test_dry_run_computes_every_burst_and_sends_none(tmp_path):
    pipeline = write_pipeline(tmp_path, SAMPLE, virtual_inverter())
    result = canbridge("run", str(pipeline), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert recorded(tmp_path / "inverter.log") == []
    status = json.loads((tmp_path / "status.json").read_text())["components"]["inverter"]
    assert (status["bursts"], status["frames_out"], status["errors"]) == (8, 0, 0)


# -- a generated day in the life: a glitch, an alarm, a silence --------------------------------

NORMAL_35A = bytes.fromhex("ABAAFEAFAAFAFF")
HIGH_VOLTAGE_35A = bytes.fromhex("A7AAFEAFAAFAFF")  # field 1 (high voltage alarm) = 1: active
GLITCH_SECOND = 5
ALARM_SECONDS = (10, 11, 12)
SILENT_SECONDS = range(20, 30)
LAST_SECOND = 39


def lynk_second(second: int) -> list[can.Message]:
    """One second of LYNK II frames (protocols/discover-lynk2.md); current = second x 0.1 A."""
    voltage = 463 if second == GLITCH_SECOND else 535
    payloads = [
        (0x351, struct.pack("<HHHH", 559, 2820, 2820, 432)),
        (0x354, struct.pack("<HH4x", 300, 216)),
        (0x355, struct.pack("<HH4x", 72, 100)),
        (0x356, struct.pack("<Hhh2x", voltage, second, 280)),
        (0x35A, HIGH_VOLTAGE_35A if second in ALARM_SECONDS else NORMAL_35A),
    ]
    return [can.Message(timestamp=T0 + second + 0.3 + k * 0.001, arbitration_id=frame_id,
                        data=data, is_extended_id=False)
            for k, (frame_id, data) in enumerate(payloads)]


def write_capture(path: Path, frames: Iterable[can.Message], channel: str) -> Path:
    writer = can.io.CanutilsLogWriter(str(path), channel=channel)
    for msg in frames:
        writer.on_message_received(msg)
    writer.stop()
    return path


def test_glitch_alarm_and_silence_reach_the_inverter_at_the_right_times(tmp_path):
    # The capture (so the pipeline clock) starts at T0 with a frame the source ignores.
    start = can.Message(timestamp=T0, arbitration_id=0x204, data=bytes(8), is_extended_id=False)
    battery = write_capture(tmp_path / "battery.log", [start, *(
        msg for second in range(LAST_SECOND + 1) if second not in SILENT_SECONDS
        for msg in lynk_second(second))], "can0")
    pipeline = write_pipeline(tmp_path, battery, virtual_inverter(), glitch=True)
    result = canbridge("run", str(pipeline))
    assert result.returncode == 0, result.stderr

    frames = recorded(tmp_path / "inverter.log")
    assert all(not m.is_rx for m in frames)
    bursts = bursts_of(frames)
    # The data set is first complete with second 0's 0x356 (T0 + 0.303): the first burst
    # goes out then, and burst n at T0 + 0.303 + n. That is the very time of second n's
    # 0x356, and timers due at a frame's time fire before it: burst n >= 1 carries 0x356
    # and 0x35A (current, alarms) of second n - 1.
    first = T0 + 0.303
    assert sorted(bursts) == [round(first + n, 6) for n in range(LAST_SECOND + 1)]
    # Second 0's 0x35A (T0 + 0.304) comes just after the first burst.
    assert hexes(bursts[round(first, 6)]) == {**NO_REPORT_BURST, 0x356: "E6 14 00 00 18 01"}
    for n in range(1, LAST_SECOND + 1):
        at = round(first + n, 6)
        burst, sent = hexes(bursts[at]), decode_burst(bursts[at])
        data_second = n - 1
        if 24 <= n <= 30:
            # Last data at T0 + 19.300 (0x351) to 19.303 (0x356): 0x351 and 0x355 are over
            # 5 s old at T0 + 24.303, so that burst is safe, 5.003 s after the last 0x351,
            # until the fresh set completed at T0 + 30.303 is sent at T0 + 31.303.
            assert burst == SAFE_BURST, n
            continue
        if n in range(21, 24):
            data_second = 19  # the last known values, still within stale_after_secs
        assert sent["current"] == pytest.approx(data_second / 10), n
        assert sent["voltage"] == 53.5, n  # the 46.3 V glitch of second 5 never gets out
        if data_second in ALARM_SECONDS:
            # The over-voltage alarm stops charging by flag and by limit together.
            assert (burst[0x359], burst[0x35C]) == ("02 00 00 00 01 50 4E", "40 00"), n
            assert burst[0x351] == "2F 02 00 00 04 0B B0 01", n
        else:
            assert (burst[0x359], burst[0x35C]) == ("00 00 00 00 01 50 4E", "C0 00"), n
            assert burst[0x351] == NORMAL_BURST[0x351], n

    status = json.loads((tmp_path / "status.json").read_text())["components"]["inverter"]
    assert (status["state"], status["errors"]) == ("ok", 0)
    warnings = [line.split("WARNING canbridge.inverter: ")[1]
                for line in result.stderr.splitlines() if "WARNING canbridge.inverter" in line]
    assert warnings == [
        "charge disabled: alarm_high_voltage",
        "battery data stale (charge_voltage_limit 5.0 s old, charge_current_limit 5.0 s "
        "old, discharge_current_limit 5.0 s old, discharge_voltage_limit 5.0 s old, soc "
        "5.0 s old): safe state: CCL = DCL = 0, charge and discharge disabled",
    ], result.stderr  # 0x356's signals are exactly 5 s old: still fresh


def test_the_inverter_keepalive_through_the_engine_in_both_id_forms(tmp_path):
    """0x305 on the sink's bus, 29-bit every third second (Schneider), then quiet."""
    inverter = write_capture(tmp_path / "inverter-in.log", (
        can.Message(timestamp=1745512155.0 + second, arbitration_id=0x305, data=bytes(8),
                    is_extended_id=second % 3 == 0) for second in range(3)), "can1")
    pipeline = write_pipeline(tmp_path, SAMPLE, {"interface": "replay", "path": str(inverter),
                                                 "speed": "max"},
                              sink={"inverter_timeout_secs": 4.0})
    result = canbridge("run", str(pipeline))
    assert result.returncode == 0, result.stderr
    frames = recorded(tmp_path / "inverter.log")
    received = [(m.arbitration_id, m.is_extended_id) for m in frames if m.is_rx]
    assert received == [(0x305, True), (0x305, False), (0x305, False)]
    assert len(bursts_of(frames)) == 8  # the sink still sends, and never 0x305
    assert 0x305 not in {m.arbitration_id for m in frames if not m.is_rx}
    status = json.loads((tmp_path / "status.json").read_text())["components"]["inverter"]
    assert status["frames_in"] == 3
    assert status["inverter_alive"] is False  # last 0x305 at +2 s, timeout 4 s, end at +8 s
    assert status["inverter_last_seen_age"] == pytest.approx(6.0025, abs=0.001)
    assert "inverter alive: 0x305 keepalive received (29-bit ID)" in result.stderr
    assert "inverter keepalive 0x305 not seen for 4 s" in result.stderr


# -- the example pipelines ---------------------------------------------------------------


def test_the_production_example_validates():
    result = canbridge("validate", "examples/pipeline.toml")
    assert (result.returncode, result.stdout.strip()) == (
        0, "examples/pipeline.toml: ok (2 buses, 7 components, 1 forwards)")


def test_the_demo_runs_without_can_hardware(tmp_path):
    """The demo as shipped, with only its output moved out of the repository."""
    demo = tomllib.loads((REPO / "examples" / "demo.toml").read_text())
    assert demo["buses"]["battery"]["loop"] is True
    assert demo["buses"]["inverter"]["interface"] == "virtual"
    assert demo["sinks"]["console"]["type"] == "console"
    demo["buses"]["battery"]["path"] = str(SAMPLE)
    demo["buses"]["inverter"]["record"] = str(tmp_path / "inverter.log")
    demo["buses"]["inverter"]["channel"] = f"demo-{uuid.uuid4()}"
    demo["status"] = {"file": str(tmp_path / "status.json")}
    (tmp_path / "demo.toml").write_text(tomli_w.dumps(demo))
    started = time.monotonic()
    result = canbridge("run", str(tmp_path / "demo.toml"), "--duration", "2.3")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    bursts = bursts_of(recorded(tmp_path / "inverter.log"))
    # real time: the first burst as soon as the sample's first data set is complete (4 ms
    # into it), then one a second: at about 0, 1 and 2 s of the 2.3 s run
    assert len(bursts) == 3
    assert {hexes(b)[0x35E] for b in bursts.values()} == {NORMAL_BURST[0x35E]}
    # The first burst precedes the first alarm report (0x35A): no direction enabled yet.
    assert [hexes(b)[0x35C] for _, b in sorted(bursts.items())] == ["00 00", "C0 00", "C0 00"]


# -- speed ------------------------------------------------------------------------------


def test_a_day_of_bursts_takes_seconds_not_minutes():
    """A quarter of a day's 86 400 bursts, one update a second: the per-burst path must stay
    cheap (about 25 us a burst here, so a day's replay spends ~2 s in this sink)."""
    clock = Clock(virtual=True, start=0.0)
    handle = virtual_bus("inverter", f"speed-{uuid.uuid4()}", clock, dry_run=True)
    sink = build(PylontechSink, {"bus": "inverter", "inputs": ["lynk"]}, clock=clock,
                 buses={"inverter": handle}, dry_run=True)
    values = {"charge_voltage_limit": 55.9, "charge_current_limit": 282.0,
              "discharge_current_limit": 282.0, "discharge_voltage_limit": 43.2, "soc": 72,
              "voltage": 53.5, "current": 0.4, "temperature": 28.0, "alarm_report": "received"}
    started = time.perf_counter()
    for second in range(21_600):
        run_timers(clock, second + 0.5)  # the clock at the update's time: bursts at n + 0.5
        sink.on_update(Update(second + 0.5, values))
        run_timers(clock, second + 1.0)
    elapsed = time.perf_counter() - started
    handle.close()
    assert sink.status()["bursts"] == 21_600
    assert elapsed * 4 < 20.0, f"{elapsed * 4:.1f} s for a day of bursts"
