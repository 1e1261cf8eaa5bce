"""Faults that must not take the inverter's frames away: floods, stalls, clock jumps,
signals. Each test reproduces the fault the reliability review found."""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import can
import pytest
from conftest import LYNK_TO_PYLONTECH, SAMPLE

from canbridge import engine as engine_module
from canbridge.config import load_pipeline
from canbridge.engine import Engine
from canbridge.registry import load_registry


def bridge_pipeline(folder: Path, inverter_channel: str, battery_channel: str,
                    record: Path | None = None) -> Path:
    path = folder / "pipeline.toml"
    path.write_text(f"""
[status]
file = "{folder / 'status.json'}"

[buses.lynk]
interface = "replay"
path = "{SAMPLE}"
loop = true

[buses.battery]
interface = "virtual"
channel = "{battery_channel}"

[buses.inverter]
interface = "virtual"
channel = "{inverter_channel}"
record = "{record or folder / 'inverter.log'}"

[sources.lynk]
type = "discover-lynk2"
bus = "lynk"

[sinks.inverter]
type = "pylontech"
inputs = ["lynk"]
bus = "inverter"

[forwards.keepalive]
from_bus = "inverter"
to_bus = "battery"
ids = [0x305]
""")
    return path


def test_a_keepalive_flood_never_delays_the_bursts(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A 0x305 flood (an inverter gone mad, a looped cable) with every frame forwarded gave
    a 23.9 s burst gap and 1 M queued frames. Now: a bounded queue, timers between batches,
    forwards at most max_per_sec."""
    monkeypatch.setattr(engine_module, "QUEUE_LIMIT", 2000)
    inverter, battery = f"flood-inv-{uuid.uuid4()}", f"flood-bat-{uuid.uuid4()}"
    engine = Engine(load_pipeline(bridge_pipeline(tmp_path, inverter, battery),
                                  load_registry()), duration=6.0)
    runner = threading.Thread(target=engine.run)
    flooding = threading.Event()
    battery_side = can.Bus(interface="virtual", channel=battery)

    def flood() -> None:
        with can.Bus(interface="virtual", channel=inverter) as bus:
            keepalive = can.Message(arbitration_id=0x305, data=bytes(8), is_extended_id=False)
            while flooding.is_set():
                for _ in range(200):
                    bus.send(keepalive)

    runner.start()
    time.sleep(1.5)
    flooding.set()
    flooder = threading.Thread(target=flood)
    flooder.start()
    time.sleep(3.0)
    flooding.clear()
    flooder.join()
    runner.join(15)
    forwarded = 0
    while battery_side.recv(timeout=0) is not None:
        forwarded += 1
    battery_side.shutdown()

    bursts = [msg.timestamp for msg in can.LogReader(str(tmp_path / "inverter.log"))
              if msg.arbitration_id == 0x351 and not msg.is_rx]
    gaps = [b - a for a, b in itertools.pairwise(bursts)]
    assert len(bursts) >= 4
    assert max(gaps) < 1.5, gaps  # inverters give up near 3 s
    status = engine.status_document("stopped")["engine"]
    assert status["frames_dropped"] > 0  # the queue was bounded: the flood was cut
    assert status["forwards_dropped"] > 0
    assert forwarded <= 20 * 6 + 20  # max_per_sec = 20, over a 6 s run


def test_a_record_file_on_a_stalled_disk_never_delays_the_bursts(tmp_path: Path) -> None:
    """The record file was opened, written and flushed on the engine thread: a path that
    blocks (here a FIFO nobody reads; on a Pi, a write held up behind a busy SD card) kept
    the inverter from its frames. Now the record has its own thread."""
    fifo = tmp_path / "stalled.log"
    os.mkfifo(fifo)
    inverter, battery = f"stall-inv-{uuid.uuid4()}", f"stall-bat-{uuid.uuid4()}"
    engine = Engine(load_pipeline(bridge_pipeline(tmp_path, inverter, battery, record=fifo),
                                  load_registry()), duration=3.5)
    runner = threading.Thread(target=engine.run, daemon=True)
    with can.Bus(interface="virtual", channel=inverter) as inverter_side:
        started = time.monotonic()
        runner.start()
        bursts = []
        while time.monotonic() - started < 3.0:
            msg = inverter_side.recv(timeout=0.1)
            if msg is not None and msg.arbitration_id == 0x351:
                bursts.append(time.monotonic() - started)
        runner.join(3.5 + 2.0)
        stopped = not runner.is_alive()
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # lets a stuck open go
    assert stopped  # within its duration and the record's RECORD_CLOSE_SECS
    assert len(bursts) >= 3, bursts
    assert bursts[0] < 0.5
    assert max(b - a for a, b in itertools.pairwise(bursts)) < 1.2


# -- wall-clock jumps ---------------------------------------------------------------------------


def test_a_stepped_wall_clock_never_deletes_day_files(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """+400 days for 22 s (an NTP step on a Pi without RTC), then back: no file of the data
    log may go, today's least of all."""
    from canbridge_plugins.datalog import DataLog

    from canbridge import Clock, Update
    from canbridge import clock as clock_module
    from canbridge.testing import build, feed

    logs = tmp_path / "logs"
    logs.mkdir()
    for day in ("2026-11-28", "2026-11-29", "2026-11-30"):
        (logs / f"battery-{day}.csv").write_text("time,soc\n")
    offset = [0.0]
    real_time = time.time
    monkeypatch.setattr(clock_module.time, "time", lambda: real_time() + offset[0])
    start = datetime(2026, 12, 1, 12, 0).timestamp()
    offset[0] = start - real_time()
    sink = build(DataLog, {"inputs": ["x"], "path": str(logs / "battery.csv"), "keep_days": 7,
                           "signals": ["soc"]}, clock=Clock())
    feed(sink, Update(sink.clock.now(), {"soc": 50.0}))
    sink._write_row()  # 2026-12-01
    offset[0] += 400 * 86400
    sink._write_row()  # 2028-01-05 for a moment
    offset[0] -= 400 * 86400
    sink._write_row()  # back on 2026-12-01
    sink.stop()
    names = sorted(p.name for p in logs.iterdir())
    assert names == ["battery-2026-11-28.csv", "battery-2026-11-29.csv",
                     "battery-2026-11-30.csv", "battery-2026-12-01.csv",
                     "battery-2028-01-05.csv"]
    assert (logs / "battery-2026-12-01.csv").read_text().count("\n") == 3  # header + 2 rows


def test_a_balancing_date_in_the_future_is_unknown_not_a_reason_to_wait(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from canbridge_plugins.balancing import CellBalancing
    from canbridge_plugins.balancing.state import SavedState, write_state

    from canbridge import Clock, Update
    from canbridge.testing import build

    now = 1_790_000_000.0
    path = tmp_path / "balancing.toml"
    write_state(path, SavedState(last_end=now + 400 * 86400))  # written while 400 days ahead
    balancing = build(CellBalancing, {"inputs": ["x"], "state_file": str(path)},
                      clock=Clock(virtual=True, start=now))
    assert "is in the future" in caplog.text
    assert (tmp_path / "balancing.toml.corrupt").exists()  # moved aside, like a corrupt file
    balancing.on_update(Update(now, {"soc": 98}))
    balancing.on_update(Update(now + 1, {"soc": 100}))
    assert balancing.holding  # due: not in 400 days


# -- a far-future timestamp in a replay ------------------------------------------------------


def test_a_frame_years_ahead_in_a_capture_is_skipped_not_simulated(tmp_path: Path) -> None:
    """One frame 5 years ahead at speed "max" made every 1 Hz timer fire across the years
    (SIGTERM ignored for 10 minutes, a record of 8.9 GB)."""
    from conftest import run_canbridge, write_capture

    frames = [(float(f"{line.split(')')[0][1:]}"), int(line.split()[2].split("#")[0], 16),
               bytes.fromhex(line.split("#")[1].strip()))
              for line in SAMPLE.read_text().splitlines() if line.strip()]
    t0 = frames[0][0]
    late = [(ts + 5 * 365 * 86400, frame_id, data) for ts, frame_id, data in frames[:12]]
    capture = write_capture(tmp_path / "jump.log", [*frames, *late])
    path = tmp_path / "p.toml"
    path.write_text(f"""
[status]
file = "{tmp_path / 'status.json'}"
[buses.battery]
interface = "replay"
path = "{capture}"
speed = "max"
[buses.inverter]
interface = "virtual"
channel = "jump-{uuid.uuid4()}"
record = "{tmp_path / 'inverter.log'}"
{LYNK_TO_PYLONTECH}
""")
    started = time.monotonic()
    result = run_canbridge("run", str(path), timeout=60)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert "replay battery: the capture jumps" in result.stderr
    assert "skipping the gap (max_replay_gap_secs = 3600)" in result.stderr
    bursts = [msg.timestamp for msg in can.LogReader(str(tmp_path / "inverter.log"))
              if msg.arbitration_id == 0x351]
    assert len(bursts) < 30  # seconds of bursts, not 5 years of them
    assert max(bursts) - t0 > 4 * 365 * 86400  # the frames after the gap were played
