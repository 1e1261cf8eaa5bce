"""The pylontech sink alone, on a virtual clock, sending on a python-can virtual bus.

Frames are received on a second virtual bus instance on the same channel (a virtual bus
does not receive its own frames) and checked byte for byte, decoded both with the repo's
DBC and with `decode_burst`, an independent decoder written from protocols/pylontech.md.
"""

from __future__ import annotations

import logging
import math
import struct
import uuid
from collections.abc import Mapping
from typing import Any

import can
import pytest
from canbridge_plugins.pylontech import BURST_IDS, PylontechSink
from hypothesis import given, settings
from hypothesis import strategies as st

from canbridge import Clock, Update
from canbridge.databases import builtin_dbc, parse_dbc
from canbridge.testing import build, run_timers, virtual_bus

T0 = 1000.0
SINK_LOG = "canbridge.under_test"
BURST_ORDER = list(BURST_IDS)

# The LYNK II sample capture's first second, as the discover-lynk2 source reports it
# (its 0x35A alarm report included).
LYNK_SAMPLE: dict[str, Any] = {
    "charge_voltage_limit": 55.9, "charge_current_limit": 282.0,
    "discharge_current_limit": 282.0, "discharge_voltage_limit": 43.2,
    "soc": 72, "soh": 100, "voltage": 53.5, "current": 0.4, "temperature": 28.0,
    "alarm_report": "received",
}
ALARMS = ("general", "high_voltage", "low_voltage", "high_temp_discharge", "low_temp_discharge",
          "high_temp_charge", "low_temp_charge", "high_discharge_current", "high_charge_current",
          "internal", "cell_imbalance")
QUIET = {f"{kind}_{c}": False for kind in ("alarm", "warning") for c in ALARMS}
NORMAL_BURST = {
    0x351: "2F 02 04 0B 04 0B B0 01",
    0x355: "48 00 64 00",
    0x356: "E6 14 04 00 18 01",
    0x359: "00 00 00 00 01 50 4E",
    0x35C: "C0 00",
    0x35E: "50 59 4C 4F 4E 20 20 20",
}

# Values complete but no alarm report yet (the first burst of every run): both directions
# stopped with their stop limits, system error, every other value flowing.
NO_REPORT_BURST = {
    **NORMAL_BURST,
    0x351: "2F 02 00 00 00 00 B0 01",
    0x359: "00 08 00 00 01 50 4E",
    0x35C: "00 00",
}


def hexes(burst: Mapping[int, bytes]) -> dict[int, str]:
    return {frame_id: data.hex(" ").upper() for frame_id, data in burst.items()}


def decode_burst(burst: Mapping[int, bytes]) -> dict[str, Any]:
    """Independent of the DBC: offsets, types and scales straight from pylontech.md (frames
    padded to 8 bytes decode the same)."""
    cvl, ccl, dcl, dvl = struct.unpack_from("<HhhH", burst[0x351])
    soc, soh = struct.unpack_from("<HH", burst[0x355])
    voltage, current, temperature = struct.unpack_from("<hhh", burst[0x356])
    alarm = burst[0x359]
    return {
        "charge_voltage_limit": cvl / 10, "charge_current_limit": ccl / 10,
        "discharge_current_limit": dcl / 10, "discharge_voltage_limit": dvl / 10,
        "soc": soc, "soh": soh,
        "voltage": voltage / 100, "current": current / 10, "temperature": temperature / 10,
        "protection": (alarm[0], alarm[1]), "warning": (alarm[2], alarm[3]),
        "modules": alarm[4], "pn": alarm[5:7],
        "flags": burst[0x35C][0], "flags_byte1": burst[0x35C][1],
        "manufacturer": burst[0x35E].decode("ascii"),
    }


class Rig:
    """A sink on a virtual clock and bus; `sent` collects (pipeline time, frame)."""

    def __init__(self, *, dry_run: bool = False, **options: Any):
        self.clock = Clock(virtual=True, start=T0)
        channel = f"pylontech-{uuid.uuid4()}"
        self.handle = virtual_bus("inverter", channel, self.clock, dry_run=dry_run)
        self.rx = can.Bus(interface="virtual", channel=channel)
        try:
            self.sink = build(PylontechSink, {"bus": "inverter", "inputs": ["lynk"], **options},
                              clock=self.clock, buses={"inverter": self.handle},
                              dry_run=dry_run)
        except ValueError:
            self.handle.close()
            self.rx.shutdown()
            raise
        self.sent: list[tuple[float, can.Message]] = []

    def run_until(self, until: float) -> None:
        """Fire timers one by one up to `until`, stamping what each burst sent."""
        clock = self.clock
        while (due := clock.next_due()) is not None and due <= until:
            run_timers(clock, due)
            while (msg := self.rx.recv(timeout=0)) is not None:
                self.sent.append((due, msg))
        clock.advance_to(until)

    def feed(self, at: float, values: Mapping[str, Any]) -> None:
        self.run_until(at)
        self.sink.on_update(Update(at, dict(values)))

    def bursts(self) -> dict[float, dict[int, bytes]]:
        out: dict[float, dict[int, bytes]] = {}
        for at, msg in self.sent:
            out.setdefault(at, {})[msg.arbitration_id] = bytes(msg.data)
        return out

    def last_burst(self) -> dict[int, bytes]:
        return self.bursts()[max(self.bursts())]

    def close(self) -> None:
        self.sink.stop()
        self.handle.close()
        self.rx.shutdown()


@pytest.fixture
def make_rig():
    rigs: list[Rig] = []

    def make(**options: Any) -> Rig:
        rigs.append(Rig(**options))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def one_burst(rig: Rig, values: Mapping[str, Any]) -> dict[int, bytes]:
    """Feed `values` just after the clock's time and return the next burst."""
    at = rig.clock.now() + 0.1
    rig.feed(at, values)
    rig.run_until(at + rig.sink.period)
    return rig.last_burst()


# -- bytes -------------------------------------------------------------------------------


def test_the_dbc_has_the_standard_lengths_cycle_times_and_senders():
    db = parse_dbc(builtin_dbc("pylontech"))
    assert {m.frame_id: (m.length, m.cycle_time, m.senders) for m in db.messages} == {
        0x351: (8, 1000, ["Battery"]), 0x355: (4, 1000, ["Battery"]),
        0x356: (6, 1000, ["Battery"]), 0x359: (7, 1000, ["Battery"]),
        0x35C: (2, 1000, ["Battery"]), 0x35E: (8, 1000, ["Battery"]),
        0x305: (8, 1000, ["Inverter"])}
    units = {s.name: s.unit for m in db.messages for s in m.signals if s.unit}
    assert units == {"charge_voltage_limit": "V", "charge_current_limit": "A",
                     "discharge_current_limit": "A", "discharge_voltage_limit": "V",
                     "soc": "%", "soh": "%", "voltage": "V", "current": "A",
                     "temperature": "degC"}


def test_golden_burst_from_the_lynk_sample(make_rig):
    rig = make_rig()
    first = T0 + 0.004  # the data set is complete: the first burst goes out at once
    rig.feed(first, {**LYNK_SAMPLE, **QUIET})
    rig.run_until(T0 + 3.0)
    assert [at for at, _ in rig.sent] == [first] * 6 + [first + 1] * 6 + [first + 2] * 6
    assert [m.arbitration_id for _, m in rig.sent[:6]] == BURST_ORDER
    assert all(not m.is_extended_id for _, m in rig.sent)
    assert hexes(rig.bursts()[first]) == NORMAL_BURST


def test_the_real_pylontech_capture_is_reproduced(make_rig):
    """The battery capture in pylontech.md, byte for byte, from its decoded values."""
    rig = make_rig(modules=6)
    burst = one_burst(rig, {
        "charge_voltage_limit": 53.2, "charge_current_limit": 480.0,
        "discharge_current_limit": 480.0, "discharge_voltage_limit": 45.0, "soc": 88,
        "soh": 94, "voltage": 49.86, "current": -27.0, "temperature": 36.3,
        "alarm_report": "received"})
    assert hexes(burst) == {
        0x351: "14 02 C0 12 C0 12 C2 01", 0x355: "58 00 5E 00", 0x356: "7A 13 F2 FE 6B 01",
        0x359: "00 00 00 00 06 50 4E", 0x35C: "C0 00", 0x35E: "50 59 4C 4F 4E 20 20 20"}


def test_values_are_rounded_and_limits_never_rounded_up(make_rig):
    rig = make_rig()
    burst = one_burst(rig, {**LYNK_SAMPLE, "voltage": 53.49, "current": -0.29,
                            "temperature": -5.06, "charge_voltage_limit": 55.96,
                            "charge_current_limit": 28.25, "discharge_voltage_limit": 43.21})
    voltage, current, temperature = struct.unpack("<hhh", burst[0x356])
    assert (voltage, current, temperature) == (5349, -3, -51)  # nearest, signed
    cvl, ccl, _, dvl = struct.unpack("<HhhH", burst[0x351])
    # A limit is rounded towards safety: CVL/CCL down, the cut-out voltage up.
    assert (cvl, ccl, dvl) == (559, 282, 433)


def test_out_of_range_values_saturate_instead_of_wrapping(make_rig, caplog):
    rig = make_rig(plausible_voltage_max=1000.0)
    with caplog.at_level(logging.WARNING):
        burst = one_burst(rig, {**LYNK_SAMPLE, "charge_current_limit": 4000.0,
                                "voltage": 400.0})
    values = decode_burst(burst)
    assert values["charge_current_limit"] == 3276.7
    assert values["voltage"] == 327.67
    assert values["flags"] == 0xC0
    assert "clamped: charge_current_limit, voltage" in caplog.text


finite_values = st.fixed_dictionaries({
    "charge_voltage_limit": st.integers(490, 600).map(lambda r: r / 10),
    "charge_current_limit": st.integers(1, 3000).map(lambda r: r / 10),
    "discharge_current_limit": st.integers(1, 3000).map(lambda r: r / 10),
    "discharge_voltage_limit": st.integers(400, 480).map(lambda r: r / 10),
    "soc": st.integers(0, 100), "soh": st.integers(0, 100),
    "voltage": st.integers(4000, 6500).map(lambda r: r / 100),
    "current": st.integers(-3000, 3000).map(lambda r: r / 10),
    "temperature": st.integers(-400, 800).map(lambda r: r / 10),
    "alarm_report": st.just("received"),
})
NUMBERS = [name for name in LYNK_SAMPLE if name != "alarm_report"]


def test_sent_frames_decode_back_to_the_input_with_both_decoders(make_rig):
    rig = make_rig(modules=3, manufacturer="DISCOVER")
    db = parse_dbc(builtin_dbc("pylontech"))

    @settings(max_examples=150, deadline=None)
    @given(values=finite_values)
    def check(values: dict[str, Any]) -> None:
        burst = one_burst(rig, values)
        assert [len(burst[i]) for i in BURST_ORDER] == [8, 4, 6, 7, 2, 8]
        independent = decode_burst(burst)
        by_dbc = {}
        for frame_id in BURST_ORDER:
            by_dbc.update(db.decode_message(frame_id, burst[frame_id], decode_choices=False))
        for name in NUMBERS:
            value = values[name]
            assert independent[name] == pytest.approx(value, abs=1e-9), name
            assert by_dbc[name] == pytest.approx(value, abs=1e-9), name
        assert independent["modules"] == by_dbc["module_count"] == 3
        assert independent["pn"] == b"PN"
        assert by_dbc["product_code"] == 0x4E50
        assert by_dbc["manufacturer"].to_bytes(8, "little") == b"DISCOVER"
        assert independent["manufacturer"] == "DISCOVER"

    check()


def test_soh_defaults_to_100_and_soc_reported_wins_while_it_is_current(make_rig):
    rig = make_rig()
    without_soh = {k: v for k, v in LYNK_SAMPLE.items() if k != "soh"}
    assert struct.unpack("<HH", one_burst(rig, without_soh)[0x355]) == (72, 100)
    held = one_burst(rig, {**LYNK_SAMPLE, "soc": 97, "soc_reported": 99})
    assert struct.unpack("<HH", held[0x355]) == (99, 100)
    # The hold ended and the transform stopped sending soc_reported: soc is newer, and wins.
    assert struct.unpack("<HH", one_burst(rig, {**LYNK_SAMPLE, "soc": 98})[0x355]) == (98, 100)


def test_manufacturer_is_ascii_space_padded(make_rig):
    assert one_burst(make_rig(manufacturer="DISCOVER"), LYNK_SAMPLE)[0x35E] == b"DISCOVER"
    assert one_burst(make_rig(manufacturer="PYLON"), LYNK_SAMPLE)[0x35E] == b"PYLON   "


def test_pad_to_8_bytes_pads_with_zeros_only(make_rig):
    burst = one_burst(make_rig(pad_to_8_bytes=True), {**LYNK_SAMPLE, **QUIET})
    for frame_id, standard in NORMAL_BURST.items():
        assert len(burst[frame_id]) == 8
        assert burst[frame_id] == bytes.fromhex(standard).ljust(8, b"\0")


# -- 0x359 and 0x35C -----------------------------------------------------------------------

# (vocabulary signal, 0x359 byte, bit, expected 0x35C byte 0) per signals.md
ALARM_TABLE = [
    ("alarm_high_voltage", 0, 1, 0x40),
    ("alarm_low_voltage", 0, 2, 0x80),
    ("alarm_high_temp_charge", 0, 3, 0x40),
    ("alarm_high_temp_discharge", 0, 3, 0x80),
    ("alarm_low_temp_charge", 0, 4, 0x40),
    ("alarm_low_temp_discharge", 0, 4, 0x80),
    ("alarm_high_discharge_current", 0, 7, 0x80),
    ("alarm_high_charge_current", 1, 0, 0x40),
    ("alarm_general", 1, 3, 0x00),
    ("alarm_internal", 1, 3, 0x00),
    ("alarm_cell_imbalance", 1, 3, 0x00),
    ("warning_high_voltage", 2, 1, 0xC0),
    ("warning_low_voltage", 2, 2, 0xC0),
    ("warning_high_temp_charge", 2, 3, 0xC0),
    ("warning_high_temp_discharge", 2, 3, 0xC0),
    ("warning_low_temp_charge", 2, 4, 0xC0),
    ("warning_low_temp_discharge", 2, 4, 0xC0),
    ("warning_high_discharge_current", 2, 7, 0xC0),
    ("warning_high_charge_current", 3, 0, 0xC0),
    ("warning_internal", 3, 3, 0xC0),
    ("warning_cell_imbalance", 3, 3, 0xC0),
]


@pytest.mark.parametrize(("signal", "byte", "bit", "flags"), ALARM_TABLE,
                         ids=[row[0] for row in ALARM_TABLE])
def test_each_alarm_sets_its_0x359_bit_and_the_0x35c_flags(make_rig, signal, byte, bit, flags):
    rig = make_rig()
    burst = one_burst(rig, {**LYNK_SAMPLE, **QUIET, signal: True})
    expected = bytearray(4)
    expected[byte] = 1 << bit
    assert burst[0x359] == bytes(expected) + b"\x01PN"
    assert burst[0x35C] == bytes([flags, 0])
    # It clears again with the alarm.
    assert hexes(one_burst(rig, {**LYNK_SAMPLE, **QUIET})) == NORMAL_BURST


@pytest.mark.parametrize(("changes", "flags"), [
    ({"charge_current_limit": 0.0}, 0x40),
    ({"discharge_current_limit": 0.0}, 0x80),
    ({"charge_current_limit": 0.0, "discharge_current_limit": 0.0}, 0x00),
    ({"charge_current_limit": 0.04}, 0x40),  # encodes as 0 A: the flag agrees with the frame
    ({"charge_current_limit": 0.1, "discharge_current_limit": 0.1}, 0xC0),
])
def test_a_zero_current_limit_clears_its_enable_flag(make_rig, changes, flags):
    burst = one_burst(make_rig(), {**LYNK_SAMPLE, **QUIET, **changes})
    assert burst[0x35C] == bytes([flags, 0])
    assert burst[0x359][:4] == bytes(4)


def test_a_cap_of_zero_disables_that_direction(make_rig):
    burst = one_burst(make_rig(max_charge_current=0.0), LYNK_SAMPLE)
    assert decode_burst(burst)["charge_current_limit"] == 0.0
    assert burst[0x35C] == b"\x40\x00"


CHARGE_BLOCKERS = {"alarm_high_voltage", "alarm_high_temp_charge", "alarm_low_temp_charge",
                   "alarm_high_charge_current"}
DISCHARGE_BLOCKERS = {"alarm_low_voltage", "alarm_high_temp_discharge",
                      "alarm_low_temp_discharge", "alarm_high_discharge_current"}
SYSTEM_ERROR = {"alarm_general", "alarm_internal", "alarm_cell_imbalance"}


def test_flags_follow_the_rules_for_any_mix_of_alarms_and_warnings(make_rig):
    rig = make_rig()

    @settings(max_examples=200, deadline=None)
    @given(active=st.sets(st.sampled_from(sorted(QUIET))),
           ccl=st.sampled_from([0.0, 50.0]), dcl=st.sampled_from([0.0, 50.0]))
    def check(active: set[str], ccl: float, dcl: float) -> None:
        values = {**LYNK_SAMPLE, **QUIET, **dict.fromkeys(active, True),
                  "charge_current_limit": ccl, "discharge_current_limit": dcl}
        burst = one_burst(rig, values)
        error = bool(active & SYSTEM_ERROR)
        charge = ccl > 0 and not active & CHARGE_BLOCKERS and not error
        discharge = dcl > 0 and not active & DISCHARGE_BLOCKERS and not error
        assert burst[0x35C] == bytes([0x80 * charge | 0x40 * discharge, 0])
        assert bool(burst[0x359][1] & 0x08) == error

    check()


# -- limits: caps and stop_current ----------------------------------------------------------


def test_caps_only_ever_lower_a_limit(make_rig):
    rig = make_rig(max_charge_voltage=54.0, max_charge_current=100.0,
                   max_discharge_current=150.0)
    caps = {"charge_voltage_limit": 54.0, "charge_current_limit": 100.0,
            "discharge_current_limit": 150.0}

    @settings(max_examples=200, deadline=None)
    @given(values=finite_values)
    def check(values: dict[str, Any]) -> None:
        sent = decode_burst(one_burst(rig, values))
        for name, cap in caps.items():
            assert sent[name] <= values[name] + 1e-9
            assert sent[name] == pytest.approx(min(values[name], cap), abs=1e-9)

    check()


@settings(max_examples=300, deadline=None)
@given(bms=st.floats(0, 3000, allow_nan=False), cap=st.none() | st.floats(0, 3000))
def test_no_limit_is_ever_sent_above_the_battery_value_or_the_cap(bms, cap):
    """Any float, however it rounds: the encoded CCL never exceeds min(battery, cap)."""
    rig = Rig(**({} if cap is None else {"max_charge_current": cap}))
    try:
        sent = decode_burst(one_burst(rig, {**LYNK_SAMPLE, "charge_current_limit": bms}))
    finally:
        rig.close()
    assert sent["charge_current_limit"] <= min(bms, math.inf if cap is None else cap) + 1e-6


def test_stop_current_replaces_a_zero_limit_and_nothing_else(make_rig):
    rig = make_rig(stop_current=0.1)
    burst = one_burst(rig, {**LYNK_SAMPLE, "charge_current_limit": 0.0})
    assert burst[0x351] == bytes.fromhex("2F 02 01 00 04 0B B0 01")  # CCL 0.1 A, DCL 282 A
    assert burst[0x35C] == b"\x40\x00"  # the flag still says: no charging
    assert hexes(one_burst(rig, LYNK_SAMPLE))[0x351] == NORMAL_BURST[0x351]


@pytest.mark.parametrize(("options", "message"), [
    ({"stop_current": 0.05}, "stop_current: 0.05 A is sent as 0 A (resolution 0.1 A)"),
    ({"stop_current": 2.0}, "stop_current: 2 is out of range (>= 0, <= 1)"),
    ({"period_secs": 3.0}, "period_secs: 3 is out of range (>= 0.1, <= 2.5)"),
    ({"manufacturer": "PYLONTECH"}, "manufacturer: 'PYLONTECH' is longer than 8 characters"),
    ({"manufacturer": "PYLÖN"}, "manufacturer: 'PYLÖN' is not plain ASCII"),
    ({"manufacturer": "PY\tLON"}, "manufacturer: must be printable ASCII"),
    ({"on_stale": "zero"}, 'on_stale: \'zero\' is not one of "safe", "silent"'),
    ({"max_charge_voltage": 0.0}, "max_charge_voltage: 0 is out of range (> 0"),
    ({"stale_after_secs": 2.0, "period_secs": 2.5}, "stale_after_secs: must be at least"),
])
def test_bad_options_are_refused(make_rig, options, message):
    with pytest.raises(ValueError) as excinfo:
        make_rig(**options)
    assert message in str(excinfo.value)


# -- start-up, stale data, safe state --------------------------------------------------------


def test_nothing_is_sent_before_the_first_complete_set(make_rig):
    rig = make_rig()
    partial = {k: v for k, v in LYNK_SAMPLE.items() if k != "temperature"}
    for second in range(5):
        rig.feed(T0 + second + 0.5, partial)
    rig.run_until(T0 + 5.0)
    assert rig.sent == []
    assert rig.sink.status()["state"] == "waiting"
    assert rig.sink.status()["last_seen_age"] is None
    rig.feed(T0 + 5.2, LYNK_SAMPLE)
    rig.run_until(T0 + 6.0)
    assert sorted({at for at, _ in rig.sent}) == [T0 + 5.2]
    assert rig.sink.status()["state"] == "ok"


def test_the_first_burst_goes_out_as_soon_as_the_data_is_complete(make_rig, caplog):
    """Start-up: the first burst does not wait up to a period (the start-up target is a
    first frame within 1 s of launch); every later burst keeps its phase."""
    rig = make_rig(period_secs=0.7)
    without_temperature = {k: v for k, v in LYNK_SAMPLE.items() if k != "temperature"}
    rig.feed(T0 + 0.25, {**without_temperature, **QUIET})
    rig.run_until(T0 + 1.3)
    assert rig.sent == []  # the tick at T0 + 0.7 found the set incomplete
    complete = T0 + 1.3  # off the start-up phase (T0 + 0.7 n): the next tick would be T0 + 1.4
    with caplog.at_level(logging.INFO, logger=SINK_LOG):
        rig.feed(complete, {"temperature": 28.0})
        rig.run_until(complete)
    assert [at for at, _ in rig.sent] == [complete] * 6
    assert hexes(rig.bursts()[complete]) == NORMAL_BURST
    assert [r.getMessage() for r in caplog.records if r.name == SINK_LOG] == [
        "battery data complete: sending Pylontech frames every 0.7 s (inverter profile generic)"]
    for second in (2, 3, 4):  # later updates, off the burst phase, do not move it
        rig.feed(T0 + second + 0.5, {**LYNK_SAMPLE, **QUIET})
    rig.run_until(complete + 5 * 0.7)
    assert sorted(rig.bursts()) == [complete + n * 0.7 for n in range(6)]
    assert all(hexes(burst) == NORMAL_BURST for burst in rig.bursts().values())
    assert rig.sink.status()["bursts"] == 6


SAFE_BURST = {
    0x351: "2F 02 00 00 00 00 B0 01",  # CVL and DVL kept, CCL = DCL = 0
    0x355: "48 00 64 00",
    0x356: "E6 14 00 00 18 01",  # voltage and temperature kept, current 0
    0x359: "00 08 00 00 01 50 4E",  # system error
    0x35C: "00 00",
    0x35E: "50 59 4C 4F 4E 20 20 20",
}


def test_stale_data_enters_the_safe_state_in_time_and_fresh_data_ends_it(make_rig, caplog):
    rig = make_rig()  # period 1 s, stale after 5 s
    with caplog.at_level(logging.INFO, logger=SINK_LOG):
        first = T0 + 0.3
        rig.feed(first, {**LYNK_SAMPLE, **QUIET})
        rig.run_until(T0 + 10.0)
        bursts = rig.bursts()
        # The only update, at 1000.3, sets the burst phase (1000.3 + n). At 1005.3 the data
        # is exactly stale_after_secs old, still fresh; the burst at 1006.3 is safe, exactly
        # stale_after_secs + one period after the last update: the latest the rule allows.
        assert sorted(bursts) == [first + n for n in range(10)]
        assert [hexes(bursts[first + n]) == NORMAL_BURST for n in range(10)] == \
            [True] * 6 + [False] * 4
        for n in range(6, 10):
            assert hexes(bursts[first + n]) == SAFE_BURST
        status = rig.sink.status()
        assert status["state"] == "safe"
        assert status["safety"] == "safe: battery data stale (no battery update for 6.0 s)"
        assert status["stale_secs"] == pytest.approx(10.0 - 0.3 - 5.0)
        assert status["last_seen_age"] == pytest.approx(9.7)

        rig.feed(T0 + 10.5, {**LYNK_SAMPLE, **QUIET})
        rig.run_until(first + 11)
        assert sorted(rig.bursts())[-2:] == [first + 10, first + 11]
        assert hexes(rig.bursts()[first + 10]) == SAFE_BURST
        assert hexes(rig.bursts()[first + 11]) == NORMAL_BURST  # the next burst: recovered
        assert rig.sink.status()["state"] == "ok"
        assert rig.sink.status()["stale_secs"] == 0.0
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == SINK_LOG]
    assert lines == [
        ("INFO", "battery data complete: sending Pylontech frames every 1 s "
                 "(inverter profile generic)"),
        ("WARNING", "battery data stale (no battery update for 6.0 s): safe state: "
                    "CCL = DCL = 0, charge and discharge disabled"),
        ("INFO", "battery data fresh again: safe state ended"),
    ]


@settings(max_examples=60, deadline=None)
@given(period=st.integers(1, 25).map(lambda n: n / 10), stale=st.integers(20, 100).map(
    lambda n: n / 10), last=st.floats(0.01, 3.0))
def test_the_safe_state_starts_within_stale_after_plus_one_period(period, stale, last):
    rig = Rig(period_secs=period, stale_after_secs=max(stale, period))
    stale = rig.sink.model.stale_after
    try:
        rig.feed(T0 + last, LYNK_SAMPLE)
        rig.run_until(T0 + last + stale + 2 * period)
    finally:
        rig.close()
    safe = [at for at, burst in rig.bursts().items() if burst[0x35C] == b"\0\0"]
    normal = [at for at, burst in rig.bursts().items() if burst[0x35C] == b"\xc0\0"]
    assert safe, "no safe burst"
    assert stale < min(safe) - (T0 + last) <= stale + period + 1e-6
    assert max(normal, default=0) < min(safe)


def test_one_stale_signal_is_enough(make_rig, caplog):
    rig = make_rig()
    first = T0 + 0.5
    rig.feed(first, LYNK_SAMPLE)
    without_temperature = {k: v for k, v in LYNK_SAMPLE.items() if k != "temperature"}
    with caplog.at_level(logging.WARNING):
        for second in range(1, 9):
            rig.feed(T0 + second + 0.5, without_temperature)
        rig.run_until(T0 + 9.0)
    assert hexes(rig.bursts()[first + 5]) == NORMAL_BURST  # temperature exactly 5 s old
    assert hexes(rig.bursts()[first + 6]) == SAFE_BURST
    assert "battery data stale (temperature 6.0 s old)" in caplog.text


def test_safe_state_keeps_the_last_known_values_and_alarm_bits(make_rig):
    rig = make_rig(max_charge_voltage=55.0, modules=3)
    first = T0 + 0.5
    rig.feed(first, {**LYNK_SAMPLE, **QUIET, "voltage": 51.23, "temperature": -3.5,
                     "soc": 41, "soh": 93, "warning_low_voltage": True})
    rig.run_until(T0 + 7.0)
    assert decode_burst(rig.bursts()[first + 5])["flags"] == 0xC0  # 5 s old: still fresh
    safe = decode_burst(rig.bursts()[first + 6])
    assert safe == {
        "charge_voltage_limit": 55.0, "charge_current_limit": 0.0,
        "discharge_current_limit": 0.0, "discharge_voltage_limit": 43.2,
        "soc": 41, "soh": 93, "voltage": 51.23, "current": 0.0, "temperature": -3.5,
        "protection": (0x00, 0x08), "warning": (0x04, 0x00), "modules": 3, "pn": b"PN",
        "flags": 0x00, "flags_byte1": 0x00, "manufacturer": "PYLON   "}


@pytest.mark.parametrize(("name", "bad"), [
    ("voltage", math.nan), ("charge_current_limit", math.inf), ("temperature", "28.0"),
    ("soc", None), ("current", True)])
def test_a_value_that_is_not_a_finite_number_ages_into_the_safe_state(make_rig, name, bad):
    """Unusable data must never silence the inverter side: it is treated as missing."""
    rig = make_rig()
    first = T0 + 0.5
    rig.feed(first, LYNK_SAMPLE)
    for second in range(1, 8):
        rig.feed(T0 + second + 0.5, {**LYNK_SAMPLE, name: bad})
    rig.run_until(T0 + 7.5)
    bursts = rig.bursts()
    assert sorted(bursts) == [first + n for n in range(8)]  # a burst every period, always
    assert hexes(bursts[first + 5]) == NORMAL_BURST
    safe = bursts[first + 6]  # the bad value stands for no value: stale 5 s after the last good
    assert safe[0x35C] == b"\x00\x00"
    assert safe[0x359][1] & 0x08
    assert rig.sink.status()["state"] == "safe"
    assert rig.sink.status()["errors"] >= 7


def test_safe_state_spells_zero_as_stop_current(make_rig):
    """On an inverter that ignores 0 A, 0 A would mean "no limit": stop_current is stop."""
    rig = make_rig(stop_current=0.1)
    first = T0 + 0.5
    rig.feed(first, LYNK_SAMPLE)
    rig.run_until(T0 + 7.0)
    assert rig.bursts()[first + 5][0x35C] == b"\xc0\x00"
    burst = rig.bursts()[first + 6]  # the first safe burst
    assert burst[0x351] == bytes.fromhex("2F 02 01 00 01 00 B0 01")
    assert burst[0x35C] == b"\x00\x00"


def test_silent_mode_stops_sending_until_fresh_data_returns(make_rig, caplog):
    rig = make_rig(on_stale="silent", period_secs=0.5, stale_after_secs=3.0)
    with caplog.at_level(logging.INFO, logger=SINK_LOG):
        first = T0 + 0.2
        rig.feed(first, LYNK_SAMPLE)
        rig.run_until(T0 + 8.0)
        # to 1003.2, where the data is exactly stale_after_secs old
        assert sorted(rig.bursts()) == [first + 0.5 * n for n in range(7)]
        assert rig.sink.status()["state"] == "silent"
        rig.feed(T0 + 8.3, LYNK_SAMPLE)  # after the (silent) tick at 1008.2
        rig.run_until(first + 0.5 * 18)
    assert sorted(rig.bursts())[-3:] == [first + 0.5 * n for n in (6, 17, 18)]
    assert hexes(rig.bursts()[first + 0.5 * 17]) == NORMAL_BURST
    records = [r for r in caplog.records if r.name == SINK_LOG]
    assert [r.levelname for r in records] == ["INFO", "WARNING", "INFO"]
    assert "transmitting stopped" in records[1].getMessage()


def test_status_before_anything_arrived(make_rig):
    rig = make_rig()
    rig.run_until(T0 + 8.0)
    assert rig.sink.status() == {
        "state": "waiting", "profile": "generic", "safety": "waiting for battery data",
        "implausible": 0, "alarm_report_age": None, "alarms_supported": True, "sent": None,
        "frames_in": 0,
        "frames_out": 0, "bursts": 0, "errors": 0, "last_seen_age": None,
        "stale_secs": 3.0, "inverter_alive": False, "inverter_last_seen_age": None}


def test_safety_names_what_blocks_charging(make_rig):
    rig = make_rig()
    one_burst(rig, {**LYNK_SAMPLE, **QUIET, "alarm_high_voltage": True,
                    "discharge_current_limit": 0.0})
    assert rig.sink.status()["safety"] == ("charge disabled (alarm_high_voltage); "
                                           "discharge disabled (discharge_current_limit 0)")
    one_burst(rig, {**LYNK_SAMPLE, **QUIET})
    assert rig.sink.status()["safety"] == "normal"


# -- the inverter's keepalive -----------------------------------------------------------------


@pytest.mark.parametrize("extended", [False, True], ids=["11-bit", "29-bit"])
def test_0x305_marks_the_inverter_alive_until_the_timeout(make_rig, extended, caplog):
    rig = make_rig(inverter_timeout_secs=10.0)
    rig.sink.on_frame(can.Message(arbitration_id=0x300, data=bytes(8), timestamp=T0 + 0.5))
    assert rig.sink.status()["inverter_alive"] is False
    with caplog.at_level(logging.INFO, logger=SINK_LOG):
        rig.run_until(T0 + 1.0)
        rig.sink.on_frame(can.Message(arbitration_id=0x305, data=bytes(8),
                                      is_extended_id=extended, timestamp=T0 + 1.0))
        rig.run_until(T0 + 11.0)
        status = rig.sink.status()
        assert (status["inverter_alive"], status["inverter_last_seen_age"]) == (True, 10.0)
        assert status["frames_in"] == 1
        assert "not seen" not in caplog.text
        rig.run_until(T0 + 11.5)
        status = rig.sink.status()
        assert (status["inverter_alive"], status["inverter_last_seen_age"]) == (False, 10.5)
        rig.run_until(T0 + 13.0)
    assert [r.getMessage() for r in caplog.records if r.name == SINK_LOG] == [
        "inverter alive: 0x305 keepalive received" + (" (29-bit ID)" if extended else ""),
        "inverter keepalive 0x305 not seen for 10 s",
    ]


def test_the_sink_never_sends_0x305_and_keeps_the_burst_order(make_rig):
    rig = make_rig()
    for second in range(30):
        rig.sink.on_frame(can.Message(arbitration_id=0x305, data=bytes(8),
                                      timestamp=T0 + second))
        if second < 20 or second > 27:
            values = {**LYNK_SAMPLE, **QUIET, "alarm_general": second % 3 == 0}
            rig.feed(T0 + second + 0.5, values)
    rig.run_until(T0 + 30.0)
    bursts = rig.bursts()
    assert len(bursts) == 30
    assert all(list(b) == BURST_ORDER for b in bursts.values())
    assert 0x305 not in {m.arbitration_id for _, m in rig.sent}
    assert rig.sink.status()["frames_out"] == 180


def test_no_burst_goes_out_after_stop(make_rig):
    rig = make_rig()
    rig.feed(T0 + 0.5, {**LYNK_SAMPLE, **QUIET})
    rig.run_until(T0 + 2.0)
    rig.sink.stop()
    rig.run_until(T0 + 10.0)
    assert sorted(rig.bursts()) == [T0 + 0.5, T0 + 1.5]

# -- dry run ------------------------------------------------------------------------------


def test_dry_run_transmits_nothing_and_logs_the_bursts(make_rig, caplog):
    rig = make_rig(dry_run=True)
    with caplog.at_level(logging.DEBUG, logger=SINK_LOG):
        rig.feed(T0 + 0.5, {**LYNK_SAMPLE, **QUIET})
        rig.run_until(T0 + 2.0)
    assert rig.sent == []
    status = rig.sink.status()
    assert (status["bursts"], status["frames_out"], status["errors"]) == (2, 0, 0)
    bursts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("burst")]
    assert bursts == ["burst: 351#2F02040B040BB001 355#48006400 356#E61404001801 "
                      "359#0000000001504E 35C#C000 35E#50594C4F4E202020"] * 2
    told = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dry run")]
    assert told == ["dry run, the inverter would get: CVL 55.9 V, CCL 282 A, DCL 282 A, "
                    "DVL 43.2 V, SOC 72 %, charge on, discharge on"] * 2
