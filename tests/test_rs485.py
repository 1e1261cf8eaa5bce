"""The Pylontech RS485 sink on a pseudo-terminal pair: the test plays the inverter on the
master side, the sink opens the slave as its serial port."""

from __future__ import annotations

import contextlib
import os
import select
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
from canbridge_plugins.pylontech_rs485 import PylontechRs485Sink, frames, info
from conftest import wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pylontech import LYNK_SAMPLE, T0

from canbridge import Clock, Update, profiles
from canbridge.testing import build, feed, run_timers


class Pty:
    """A pseudo-terminal pair; `link` is a stable name pointing at the current slave."""

    def __init__(self, link: Path):
        self.link = link
        self.master, self.slave = os.openpty()
        if link.is_symlink():
            link.unlink()
        link.symlink_to(os.ttyname(self.slave))

    def request(self, frame: bytes) -> None:
        os.write(self.master, frame)

    def read(self, timeout: float = 2.0) -> bytes:
        """Bytes until a CR, or what came before `timeout` (b"" for silence)."""
        out = b""
        deadline = time.monotonic() + timeout
        while not out.endswith(b"\r"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.master], [], [], left)[0]:
                break
            out += os.read(self.master, 4096)
        return out

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):  # closed already
                os.close(fd)


def poll(cid2: int, info: bytes = b"", adr: int = 2) -> bytes:
    return frames.encode(0x20, adr, 0x46, cid2, info)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Any]:
    made: list[tuple[PylontechRs485Sink, Pty]] = []

    def make(**options: Any) -> tuple[PylontechRs485Sink, Pty]:
        pty = Pty(tmp_path / "ttyBMS")
        clock = Clock(virtual=True, start=T0)
        sink = build(PylontechRs485Sink, {"inputs": ["lynk"], "port": str(pty.link),
                                          **options}, clock=clock)
        made.append((sink, pty))
        wait_until(lambda: sink.port_state == "open")
        return sink, pty

    yield make
    for sink, pty in made:
        sink.stop()
        pty.close()


def fed(sink: PylontechRs485Sink, values: dict[str, Any] | None = None) -> None:
    """The LYNK II sample (or `values`) as the sink's input, and its answers brought up to
    date (the period timer)."""
    at = sink.clock.now() + 0.5
    run_timers(sink.clock, at)
    feed(sink, Update(at, {**LYNK_SAMPLE, "capacity_nominal": 300, **(values or {})}))
    run_timers(sink.clock, at + sink.config["period_secs"])


# -- the frames themselves: real ones from a Pylontech battery -------------------------------

def test_the_frame_codec_reproduces_real_pylontech_frames() -> None:
    """From Frankkkkk/python-pylontech and US2000 captures: a poll of address 2's analog
    values and a battery's answer, both byte for byte."""
    assert poll(0x42, b"\x02") == b"~20024642E00202FD33\r"
    answer = (b"~20024600C06E10020F0C9A0C980C990C980C9A0C9A0C990C9B0C9C0C9A0C9B0C9B0C9B0C9B"
              b"0C99050B740B550B570B530B630000BD06190F02C3500084E545\r")
    frame = frames.decode(answer)
    assert (frame.ver, frame.adr, frame.cid1, frame.cid2, len(frame.info)) == (
        0x20, 2, 0x46, 0, 55)
    assert frames.encode(0x20, 2, 0x46, 0, frame.info) == answer


def test_length_carries_its_own_checksum_over_all_three_nibbles() -> None:
    """LCHKSUM by hand: the nibble sum mod 16, inverted, plus one; over 255 INFO characters
    the third nibble counts too."""
    assert [frames.length_field(n) for n in (0, 0x012, 0x06E, 0x100, 0x1FF, 0xFFF)] == [
        0x0000, 0xD012, 0xC06E, 0xF100, 0x11FF, 0x3FFF]
    for too_long in (-1, 0x1000):
        with pytest.raises(ValueError, match="does not fit LENID"):
            frames.length_field(too_long)
    payload = bytes(range(150))
    long_frame = frames.encode(0x20, 2, 0x46, 0, payload)
    assert long_frame[9:13] == b"112C"  # 300 characters: 1 + 2 + 12 = 15 -> LCHKSUM 1
    assert frames.decode(long_frame).info == payload


@pytest.mark.parametrize(("raw", "problem"), [
    (b"~20024642E00202FD34\r", "CHKSUM FD34, expected FD33"),
    (b"~20024642F00202FD32\r", "LCHKSUM of LENGTH F002 is wrong"),
    (b"~20024642E002\r", "not a whole frame"),
    (b"~2002464ZE00202FD33\r", "not ASCII hex"),
])
def test_a_bad_frame_says_what_is_wrong(raw: bytes, problem: str) -> None:
    with pytest.raises(frames.FrameError, match=problem):
        frames.decode(raw)


# -- answers on the port ------------------------------------------------------------------------

EXPECTED = {
    # 0x4F: no INFO; the VER of the request answers it
    0x4F: "~200246000000FDB2\r",
    # 0x92: address 2, CVL 55900 mV, DVL 43200 mV, CCL +2820 (0.1 A), DCL -2820, C0
    0x92: "~20024600B014 02 DA5C A8C0 0B04 F4FC C0 F904\r",
}


def hexes(text: str) -> bytes:
    return text.replace(" ", "").encode()


def test_management_and_version_answers_byte_for_byte(rig) -> None:
    sink, pty = rig()
    fed(sink)
    for cid2, expected in EXPECTED.items():
        pty.request(poll(cid2, b"\x02" if cid2 == 0x92 else b""))
        assert pty.read() == hexes(expected), hex(cid2)


def test_every_answer_decodes_to_the_battery_state(rig) -> None:
    sink, pty = rig(cells=16)
    fed(sink)
    answers = {}
    for cid2 in (0x51, 0x42, 0x44, 0x47, 0x92):
        pty.request(poll(cid2, b"\x02"))
        answer = frames.decode(pty.read())
        assert (answer.adr, answer.cid1, answer.cid2) == (2, 0x46, 0)
        answers[cid2] = answer.info
    assert answers[0x51] == b"PYLON     \x01\x00PYLON" + b" " * 15
    analog = answers[0x42]
    assert analog[:3] == bytes([0x00, 2, 16])
    cells = struct.unpack(">16H", analog[3:35])
    assert set(cells) == {3344}  # 53.5 V / 16, in mV
    assert analog[35:38] == bytes([1]) + struct.pack(">H", 280 + 2731)
    current, voltage, remaining, items, total, cycles = struct.unpack(">hHHBHH", analog[38:49])
    assert (current, voltage, remaining, items, total, cycles) == (4, 53500, 0xFFFF, 4, 0xFFFF,
                                                                   0)
    # 300 Ah does not fit 16 bits of mAh: three-byte fields, SOC 72 % of it
    assert (int.from_bytes(analog[49:52], "big"), int.from_bytes(analog[52:55], "big")) == (
        216000, 300000)
    assert answers[0x44] == bytes([0, 2, 16, *[0] * 16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    params = struct.unpack(">HHHHHhHHHHHh", answers[0x47][1:])
    assert params == (3493, 2700, 2700, 450 + 2731, 0 + 2731, 2820, 55900, 43200, 43200,
                      550 + 2731, -200 + 2731, -2820)
    assert answers[0x92] == bytes([2]) + struct.pack(">HHhhB", 55900, 43200, 2820, -2820,
                                                       0xC0)


def test_an_alarm_reaches_0x44_and_stops_charging_in_0x92(rig) -> None:
    sink, pty = rig()
    fed(sink, {"alarm_high_voltage": True})
    pty.request(poll(0x92, b"\x02"))
    _, _, ccl, dcl, status = struct.unpack(">HHhhB", frames.decode(pty.read()).info[1:])
    assert (ccl, dcl, status) == (0, -2820, 0x40)  # the flag and the limit together
    pty.request(poll(0x44, b"\x02"))
    assert frames.decode(pty.read()).info[-9:-5] == bytes([0, 0, 2, 0])  # pack voltage high


@pytest.mark.parametrize(("alarm", "states"), [
    ("alarm_low_voltage", [0, 0, 1, 0]),
    ("alarm_high_temp_charge", [2, 0, 0, 0]),
    ("alarm_low_temp_discharge", [1, 0, 0, 0]),
    ("alarm_high_charge_current", [0, 2, 0, 0]),
    ("alarm_high_discharge_current", [0, 0, 0, 2]),
])
def test_each_alarm_has_its_place_in_0x44(rig, alarm: str, states: list[int]) -> None:
    """Temperature, charge current, pack voltage, discharge current: 1 below the lower
    limit, 2 above the upper one."""
    sink, pty = rig()
    fed(sink, {alarm: True})
    pty.request(poll(0x44, b"\x02"))
    assert list(frames.decode(pty.read()).info[-9:-5]) == states


@pytest.mark.parametrize("capacity", [50, 65.535])
def test_a_small_pack_has_two_byte_capacities_and_cell_limits_rounded_inward(
        rig, capacity: float) -> None:
    """Up to 65.535 Ah the capacities fit 16 bits (item count 2). With 14 cells neither limit
    divides evenly: the cell's high limit is rounded down and its low limit up."""
    sink, pty = rig(cells=14)
    fed(sink, {"capacity_nominal": capacity})
    pty.request(poll(0x42, b"\x02"))
    analog = frames.decode(pty.read()).info
    assert set(struct.unpack(">14H", analog[3:31])) == {3821}  # 53.5 V / 14
    total = round(capacity * 1000)
    assert struct.unpack(">hHHBHH", analog[34:]) == (4, 53500, round(total * 0.72), 2, total,
                                                     0)
    pty.request(poll(0x47, b"\x02"))
    cell_high, cell_low = struct.unpack(">HH", frames.decode(pty.read()).info[1:5])
    assert (cell_high, cell_low) == (3992, 3086)  # 55.9 V / 14 = 3992.9, 43.2 V / 14 = 3085.7


def test_limits_beyond_the_fields_saturate(rig) -> None:
    """A bank whose current limits pass 3276.7 A, a temperature below absolute zero: each
    field holds its extreme, never wrapping (a negative limit) nor failing the answer."""
    sink, pty = rig()
    fed(sink, {"charge_current_limit": 4000.0, "discharge_current_limit": 4000.0,
               "temperature": -300.0})  # another battery's source, read unchecked
    pty.request(poll(0x92, b"\x02"))
    _, _, ccl, dcl, status = struct.unpack(">HHhhB", frames.decode(pty.read()).info[1:])
    assert (ccl, dcl, status) == (32767, -32767, 0xC0)
    pty.request(poll(0x42, b"\x02"))
    analog = frames.decode(pty.read()).info
    assert analog[35:38] == b"\x01\x00\x00"  # one temperature, held at 0 K


def test_a_capacity_beyond_three_bytes_is_held_at_their_maximum(rig) -> None:
    """The LYNK II's capacity field reaches 65535 Ah; the analog answer's mAh fields stop at
    16777.215 Ah, and are held there rather than the answer failing."""
    sink, pty = rig()
    fed(sink, {"capacity_nominal": 20000})
    pty.request(poll(0x42, b"\x02"))
    fields = frames.decode(pty.read()).info[-6:]
    assert (int.from_bytes(fields[:3], "big"), int.from_bytes(fields[3:], "big")) == (
        14_400_000, 0xFFFFFF)  # 72 % of 20000 Ah still fits; the total does not


def test_a_fault_building_one_answer_costs_only_that_answer(rig, monkeypatch) -> None:
    sink, pty = rig()
    fed(sink)

    def broken(*_: Any) -> bytes:
        raise RuntimeError("a bug in one builder")

    monkeypatch.setattr(info, "alarms", broken)
    pty.request(poll(0x44, b"\x02"))
    assert pty.read(0.3) == b""
    pty.request(poll(0x92, b"\x02"))
    assert pty.read() == hexes(EXPECTED[0x92])
    status = sink.status()
    assert (status["errors"], status["port"]) == (1, "open")
    assert "a bug in one builder" in status["last_error"]


def test_without_a_capacity_from_the_battery_the_configured_one_is_answered(rig) -> None:
    sink, pty = rig(capacity_ah=50.0)
    at = sink.clock.now() + 0.5
    feed(sink, Update(at, LYNK_SAMPLE))  # no capacity_nominal in it
    run_timers(sink.clock, at + sink.config["period_secs"])
    pty.request(poll(0x42, b"\x02"))
    remaining, items, total = struct.unpack(">HBH", frames.decode(pty.read()).info[-7:-2])
    assert (remaining, items, total) == (36000, 2, 50000)


def test_a_capacity_of_its_own_reaches_the_analog_answer(rig) -> None:
    sink, _ = rig()
    fed(sink)
    feed(sink, Update(sink.clock.now(), {"capacity_nominal": 200}))  # as the LYNK II's 0x354
    assert sink.capacity_ah == 200.0


def test_nothing_is_answered_before_the_battery_data_is_complete(rig) -> None:
    sink, pty = rig()
    run_timers(sink.clock, T0 + 3)
    pty.request(poll(0x92, b"\x02"))
    assert pty.read(0.3) == b""
    pty.request(poll(0x4F))  # identification does not depend on the battery
    assert frames.decode(pty.read()).cid2 == 0


def test_another_address_is_left_alone_and_an_unknown_command_is_refused(rig) -> None:
    sink, pty = rig()
    fed(sink)
    pty.request(poll(0x92, b"\x03", adr=3))
    assert pty.read(0.3) == b""
    pty.request(poll(0x61))  # a system-level command of Pylon 3.5: layout not confirmed
    assert pty.read() == poll_answer(0x04)
    assert sink.status()["frames_in"] == 1  # the other address's request is not ours


def poll_answer(rtn: int) -> bytes:
    return frames.encode(0x20, 2, 0x46, rtn)


def test_bad_and_truncated_frames_and_garbage_are_counted_and_ignored(rig) -> None:
    sink, pty = rig()
    fed(sink)
    good = poll(0x92, b"\x02")
    bad = good[:-5] + b"0000\r"
    pty.request(bad)
    assert pty.read(0.3) == b""
    pty.request(b"~200246\r")  # truncated
    assert pty.read(0.3) == b""
    pty.request(b"\x00\xffnoise" + good + b"junk\r" + good)  # garbage around two frames
    first = pty.read()
    second = first[first.index(b"\r") + 1:] or pty.read()
    assert frames.decode(first[:first.index(b"\r") + 1]).cid2 == 0
    assert frames.decode(second).cid2 == 0
    assert sink.status()["malformed"] == 3


def test_a_poll_storm_is_bounded(rig, caplog) -> None:
    sink, pty = rig(max_answers_per_sec=5.0)
    fed(sink)
    for _ in range(40):
        pty.request(poll(0x4F))
    replies = b""
    while chunk := pty.read(0.5):
        replies += chunk
    assert 5 <= replies.count(b"\r") <= 7  # one second's worth, however many came
    status = sink.status()
    assert status["ignored"] >= 33
    assert (status["frames_in"], status["frames_out"]) == (40, replies.count(b"\r"))
    assert [r.message for r in caplog.records if "requests a second" in r.message] == [
        f"{sink.name}: more than 5 requests a second: ignoring the rest"]
    pty.request(poll(0x4F))  # half a second of quiet later, the bucket has refilled
    assert frames.decode(pty.read()).cid2 == 0


def test_a_port_that_vanishes_is_opened_again(rig, tmp_path: Path, caplog) -> None:
    sink, pty = rig()
    fed(sink)
    assert sink.status()["reopens"] == 0  # the first open is not a reopen
    pty.close()  # the adapter is unplugged
    wait_until(lambda: sink.port_state == "reopening")
    again = Pty(tmp_path / "ttyBMS")  # plugged in again (the by-id name comes back)
    try:
        wait_until(lambda: sink.port_state == "open", timeout=10)
        again.request(poll(0x4F))
        assert frames.decode(again.read()).cid2 == 0
        status = sink.status()
        assert status["reopens"] == 1
        assert str(pty.link) in status["last_error"]  # the latest failure
        told = [r.message for r in caplog.records if "backoff" in r.message]
        assert len(told) == 1 and f"{pty.link} failed: " in told[0]  # once an outage
    finally:
        again.close()


def test_stop_ends_the_port_thread_and_frees_the_port(rig) -> None:
    sink, pty = rig()
    sink.stop()
    assert not sink._thread.is_alive()
    serial.Serial(str(pty.link), exclusive=True).close()  # no one holds it any more


# -- the safety property, through the RS485 answers -------------------------------------------

states = st.fixed_dictionaries({
    "charge_voltage_limit": st.integers(500, 600).map(lambda r: r / 10),
    "discharge_voltage_limit": st.integers(400, 499).map(lambda r: r / 10),
    "charge_current_limit": st.integers(0, 3000).map(lambda r: r / 10),
    "discharge_current_limit": st.integers(0, 3000).map(lambda r: r / 10),
    "voltage": st.integers(400, 650).map(lambda r: r / 10),
    "alarm_high_voltage": st.booleans(), "alarm_low_voltage": st.booleans(),
    "alarm_general": st.booleans(),
}, optional={"alarm_report": st.just("received")})


@pytest.mark.parametrize("profile", profiles.names())
def test_no_profile_answers_an_unsafe_0x92(profile: str) -> None:
    sink = build(PylontechRs485Sink, {"inputs": ["x"], "port": "/dev/null-never-opened",
                                      "inverter": profile}, clock=Clock(virtual=True, start=T0),
                 start=False)
    stop = sink.config["stop_current"]

    @settings(max_examples=60, deadline=None)
    @given(state=states, gap=st.sampled_from([0.5, 7.0]))
    def check(state: dict[str, Any], gap: float) -> None:
        at = sink.clock.now() + gap
        sink.clock.advance_to(at)
        sink.on_update(Update(at, {**LYNK_SAMPLE, **state}))
        sink._refresh()
        raw = sink.answer(poll(0x92, b"\x02"))
        if raw is None:
            return
        battery = sink.model.latest
        cvl, dvl, ccl, dcl, status = struct.unpack(">HHhhB", frames.decode(raw).info[1:])
        assert dvl == round(battery["discharge_voltage_limit"] * 1000)
        assert 0 < cvl <= round(battery["charge_voltage_limit"] * 1000)
        assert cvl >= round(battery["discharge_voltage_limit"] * 1000)
        for enabled, limit, name in ((status & 0x80, ccl, "charge_current_limit"),
                                     (status & 0x40, -dcl, "discharge_current_limit")):
            if enabled:
                assert 0 < limit <= round(battery[name] * 10)
            else:
                assert limit == round(stop * 10)

    check()


def test_one_battery_two_inverters_can_and_rs485_each_half_the_limits(tmp_path: Path) -> None:
    """The sample capture feeding a CAN Pylontech sink and an RS485 one, current_share 0.5
    each: both inverters see the same SOC and half the battery's limits."""
    import signal
    import subprocess
    import uuid

    import can
    from conftest import REPO, canbridge_cmd, subprocess_env

    pty = Pty(tmp_path / "ttyBMS")
    path = tmp_path / "p.toml"
    path.write_text(f"""
[status]
file = "{tmp_path / 'status.json'}"
[buses.battery]
interface = "replay"
path = "{REPO / 'examples/captures/lynk2-sample.log'}"
loop = true
[buses.inverter]
interface = "virtual"
channel = "two-{uuid.uuid4()}"
record = "{tmp_path / 'inverter.log'}"
[sources.lynk]
type = "discover-lynk2"
bus = "battery"
[sinks.can_inverter]
type = "pylontech"
inputs = ["lynk"]
bus = "inverter"
current_share = 0.5
[sinks.rs485_inverter]
type = "pylontech-rs485"
inputs = ["lynk"]
port = "{pty.link}"
current_share = 0.5
""")
    checked = subprocess.run(canbridge_cmd("validate", str(path)), env=subprocess_env(),
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    proc = subprocess.Popen(canbridge_cmd("run", str(path)), env=subprocess_env(),
                            stderr=subprocess.PIPE, text=True)
    try:
        answer = b""
        deadline = time.monotonic() + 20
        while not answer and time.monotonic() < deadline:  # until the battery data is there
            time.sleep(0.5)
            pty.request(poll(0x92, b"\x02"))
            answer = pty.read(1.0)
        management = frames.decode(answer).info
        pty.request(poll(0x42, b"\x02"))
        analog = frames.decode(pty.read()).info
        time.sleep(1.5)  # a CAN burst after the first alarm report
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        pty.close()
    assert proc.returncode == 0, stderr
    cvl, dvl, ccl, dcl, status = struct.unpack(">HHhhB", management[1:])
    assert (cvl, dvl, ccl, dcl, status) == (55900, 43200, 1410, -1410, 0xC0)  # 141.0 A each
    remaining, total = (int.from_bytes(analog[49:52], "big"), int.from_bytes(analog[52:55],
                                                                             "big"))
    assert round(100 * remaining / total) == 72
    bursts = [msg for msg in can.LogReader(str(tmp_path / "inverter.log"))
              if not msg.is_rx and msg.arbitration_id in (0x351, 0x355)]
    last_351 = [m for m in bursts if m.arbitration_id == 0x351][-1]
    last_355 = [m for m in bursts if m.arbitration_id == 0x355][-1]
    assert struct.unpack("<HhhH", last_351.data) == (559, 1410, 1410, 432)
    assert struct.unpack("<HH", last_355.data)[0] == 72
