"""End to end: a replayed charge day through discover-lynk2 -> cell-balancing -> pylontech,
recorded on a virtual inverter bus. The inverter sees 99 % for exactly hold_minutes."""

from __future__ import annotations

import bisect
import json
import uuid
from pathlib import Path

import can
import pytest
from canbridge_plugins.balancing.state import SavedState, read_state, write_state
from conftest import run_canbridge

from canbridge.databases import builtin_dbc, parse_dbc

T0 = 1745512155.0
HOLD_MINUTES = 35
HOLD = HOLD_MINUTES * 60
ALL_NORMAL_35A = bytes.fromhex("ABAAFEAFAAFAFF")  # the real steady-state alarm frame


def soc_at(second: int) -> int:
    """A sunny morning: 90 % rising 1 % every 3 min to 100 % at 30 min, full till 95 min,
    a dip to 99 % for 2 min (a second rise the same day), then full again."""
    if second < 1800:
        return 90 + second // 180
    if 5700 <= second < 5820:
        return 99
    return 100


def write_day(path: Path, seconds: int) -> list[tuple[float, int]]:
    """The LYNK II frames at 1 Hz; returns the (time, soc) of every 0x355."""
    db = parse_dbc(builtin_dbc("discover_lynk2"))
    alarms = db.decode_message(0x35A, ALL_NORMAL_35A, decode_choices=False, scaling=False)
    frames = {
        0x351: lambda s: db.encode_message(0x351, {
            "charge_voltage_limit": 55.9, "charge_current_limit": 282.0,
            "discharge_current_limit": 282.0, "discharge_voltage_limit": 43.2}),
        0x355: lambda s: db.encode_message(0x355, {"soc": soc_at(s), "soh": 100}),
        0x356: lambda s: db.encode_message(0x356, {
            "voltage": round(51.7 + 0.02 * soc_at(s), 1),
            "current": 40.0 if soc_at(s) < 100 else 29.0,
            "temperature": 28.0}),
        0x35A: lambda s: db.encode_message(0x35A, alarms, scaling=False),
    }
    writer = can.io.CanutilsLogWriter(str(path), channel="can0")
    for second in range(seconds):
        for i, (frame_id, encode) in enumerate(frames.items()):
            ts = T0 + second + 0.0005 * (i + 1)  # off the sink's whole-second ticks
            writer.on_message_received(can.Message(timestamp=ts, arbitration_id=frame_id,
                                                   is_extended_id=False, data=encode(second)))
    writer.stop()
    # times as the replay will read them back from the file
    return [(msg.timestamp, db.decode_message(0x355, msg.data)["soc"])
            for msg in can.LogReader(str(path)) if msg.arbitration_id == 0x355]


def pipeline(folder: Path, capture: str) -> Path:
    path = folder / f"{capture}.pipeline.toml"
    path.write_text(f"""
[buses.battery]
interface = "replay"
path = "{capture}"
speed = "max"

[buses.inverter]
interface = "virtual"
channel = "{uuid.uuid4().hex}"
record = "{capture}.inverter.log"

[sources.lynk]
type = "discover-lynk2"
bus = "battery"

[transforms.balancing]
type = "cell-balancing"
inputs = ["lynk"]
every_days = 3
hold_soc = 99
hold_minutes = {HOLD_MINUTES}
state_file = "state/balancing.toml"

[sinks.inverter]
type = "pylontech"
inputs = ["balancing"]
bus = "inverter"
period_secs = 1.0

[status]
file = "status.json"
""")
    return path


def recorded_socs(path: Path) -> list[tuple[float, int]]:
    db = parse_dbc(builtin_dbc("pylontech"))
    return [(msg.timestamp, db.decode_message(0x355, msg.data)["soc"])
            for msg in can.LogReader(str(path)) if msg.arbitration_id == 0x355]


def expected(socs: list[tuple[float, int]], t: float, hold_from: float, hold_until: float
             ) -> int:
    """What the inverter must see at tick `t`: 99 during the hold, else the latest real SOC."""
    if hold_from <= t < hold_until:
        return 99
    return socs[bisect.bisect_left(socs, (t,)) - 1][1]


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[float, int]]]:
    folder = tmp_path_factory.mktemp("day")
    return folder, write_day(folder / "day.log", 7200)


def test_replayed_day_holds_99_for_exactly_hold_minutes(
        day: tuple[Path, list[tuple[float, int]]]) -> None:
    folder, socs = day
    result = run_canbridge("run", str(pipeline(folder, "day.log")), cwd=folder)
    assert result.returncode == 0, result.stderr
    rise = next(ts for ts, soc in socs if soc > 99)
    assert "balancing hold started: SOC 100 % rose above 99 %" in result.stderr
    assert "balancing hold completed at 2025-04-24T17:34:15+00:00; next due " \
           "2025-04-27T17:34:15+00:00" in result.stderr
    assert result.stderr.count("balancing hold started") == 1  # the 99 -> 100 dip: no hold

    seen = recorded_socs(folder / "day.log.inverter.log")
    assert len(seen) > 7000
    assert [soc for t, soc in seen] == [expected(socs, t, rise, rise + HOLD) for t, _ in seen]
    held = [t for t, soc in seen if soc == 99 and rise <= t]
    assert len(held) == HOLD + 120  # the hold, then the real 99 % dip
    assert held[HOLD - 1] - held[0] == HOLD - 1
    assert read_state(folder / "state" / "balancing.toml").last_end == pytest.approx(
        rise + HOLD, abs=1e-6)

    status = json.loads((folder / "status.json").read_text())["components"]["balancing"]
    assert status["state"] == "idle" and status["balancing_last"] == "2025-04-24T17:34:15+00:00"


def test_restart_mid_hold_across_two_runs(tmp_path: Path) -> None:
    """The first run ends 10 min into the hold; canbridge is down for 5 min; the second run
    resumes and the hold ends at the same instant as if nothing had happened."""
    socs = write_day(tmp_path / "all.log", 4800)
    rise = next(ts for ts, soc in socs if soc > 99)
    frames = list(can.LogReader(str(tmp_path / "all.log")))
    stop_at, resume_at = rise + 600, rise + 900.5
    for name, keep in (("first.log", lambda t: t < stop_at),
                       ("second.log", lambda t: t >= resume_at)):
        writer = can.io.CanutilsLogWriter(str(tmp_path / name), channel="can0")
        for msg in frames:
            if keep(msg.timestamp):
                writer.on_message_received(msg)
        writer.stop()
    write_state(tmp_path / "state" / "balancing.toml", SavedState(last_end=T0 - 4 * 86400.0))

    first = run_canbridge("run", str(pipeline(tmp_path, "first.log")), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    state = read_state(tmp_path / "state" / "balancing.toml")
    assert state.last_end == T0 - 4 * 86400.0
    assert state.hold_started == pytest.approx(rise, abs=1e-6)
    second = run_canbridge("run", str(pipeline(tmp_path, "second.log")), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "balancing hold resumed after a restart: 20.0 min left" in second.stderr
    state = read_state(tmp_path / "state" / "balancing.toml")
    assert state.hold_started is None
    assert state.last_end == pytest.approx(rise + HOLD, abs=1e-6)

    seen = recorded_socs(tmp_path / "second.log.inverter.log")
    assert [soc for t, soc in seen] == [expected(socs, t, rise, rise + HOLD) for t, _ in seen]
    # bursts every second from the moment the data set is first complete after the restart
    # (first: the first replayed second's 0x356, 0.5005 s after resume_at); the hold ends
    # between two bursts, the next one shows 100 %
    first = float(rise) + 901.0005
    held = [t for t, soc in seen if soc == 99]
    assert len(held) == 1199  # first ... first + 1198 < rise + HOLD < first + 1199
    assert held[0] == pytest.approx(first, abs=1e-6)
    assert held[-1] == pytest.approx(first + 1198, abs=1e-6)
    after = seen[len(held)]
    assert after[0] == pytest.approx(first + 1199, abs=1e-6) and after[1] == 100
