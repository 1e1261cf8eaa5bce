"""The stop model real inverters obey, fed with LYNK II frames, checked byte for byte.

A discover-lynk2 source decodes the frames and hands its updates to a pylontech sink, both on
one virtual clock; the sink's bursts are read back from a python-can virtual bus. Each
LYNK II second is 0x351, 0x355, 0x356 and 0x35A, 1 ms apart, as in the real capture, so a
burst due at 0x356's time goes out before that second's 0x35A.
"""

from __future__ import annotations

import logging
import math
import struct
from typing import Any

import can
import pytest
from canbridge_plugins.discover_lynk2 import DiscoverLynk2
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pylontech import (
    LYNK_SAMPLE,
    NO_REPORT_BURST,
    NORMAL_BURST,
    QUIET,
    SAFE_BURST,
    T0,
    Rig,
    decode_burst,
    hexes,
    one_burst,
)

from canbridge import Update, profiles
from canbridge.testing import build, feed

STEADY_35A = "ABAAFEAFAAFAFF"  # every supported field normal, the rest "not supported"
HIGH_VOLTAGE_35A = "A7AAFEAFAAFAFF"  # field 1 = 1: over-voltage alarm
LOW_VOLTAGE_35A = "9BAAFEAFAAFAFF"  # field 2 = 1: under-voltage alarm
GENERAL_35A = "A9AAFEAFAAFAFF"  # field 0 = 1: general alarm
NORMAL_351 = struct.pack("<HHHH", 559, 2820, 2820, 432)  # 55.9 V, 282 A, 282 A, 43.2 V


def measurements(voltage: float = 53.5, current: float = 0.4) -> bytes:
    return struct.pack("<Hhh2x", round(voltage * 10), round(current * 10), 280)


class LynkRig:
    """LYNK II frames in, Pylontech bursts out."""

    def __init__(self, **options: Any):
        self.rig = Rig(**options)
        self.source = build(DiscoverLynk2, {"bus": "battery"}, clock=self.rig.clock)
        self.source._emit = self.rig.sink.on_update

    def second(self, n: int, *, limits: bytes = NORMAL_351, alarms: str | None = STEADY_35A,
               voltage: float = 53.5, current: float = 0.4) -> None:
        """Second `n` of LYNK II traffic; `alarms=None` leaves 0x35A out."""
        frames = [(0x351, limits), (0x355, struct.pack("<HH4x", 72, 100)),
                  (0x356, measurements(voltage, current))]
        if alarms is not None:
            frames.append((0x35A, bytes.fromhex(alarms)))
        for k, (frame_id, data) in enumerate(frames):
            at = T0 + n + 0.001 * (k + 1)
            self.rig.run_until(at)
            self.source.on_frame(can.Message(timestamp=at, arbitration_id=frame_id, data=data,
                                             is_extended_id=False))

    def seconds(self, count: int, **frames: Any) -> None:
        for n in range(count):
            self.second(n, **frames)

    def burst(self, n: int) -> dict[int, str]:
        """The burst of second n (due at its 0x356, so before its 0x35A)."""
        self.rig.run_until(T0 + n + 0.003)
        return hexes(self.rig.bursts()[round(T0 + n + 0.003, 6)])

    def close(self) -> None:
        self.rig.close()


@pytest.fixture
def lynk():
    rigs: list[LynkRig] = []

    def make(**options: Any) -> LynkRig:
        rigs.append(LynkRig(**options))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def bursts_from(rig: LynkRig, first: int, last: int) -> list[dict[int, str]]:
    return [rig.burst(n) for n in range(first, last + 1)]


# -- alarms: flag and limit together ----------------------------------------------------------


def test_the_first_burst_of_a_run_enables_nothing_until_the_first_alarm_report(lynk):
    rig = lynk()
    rig.second(0)
    assert rig.burst(0) == NO_REPORT_BURST
    status = rig.rig.sink.status()
    assert status["safety"] == ("charge disabled (no alarm report yet); "
                                "discharge disabled (no alarm report yet)")
    rig.second(1)
    assert rig.burst(1) == NORMAL_BURST
    assert rig.rig.sink.status()["safety"] == "normal"


@pytest.mark.parametrize(("alarms", "expected"), [
    (HIGH_VOLTAGE_35A, {0x351: "2F 02 00 00 04 0B B0 01", 0x359: "02 00 00 00 01 50 4E",
                        0x35C: "40 00"}),
    (LOW_VOLTAGE_35A, {0x351: "2F 02 04 0B 00 00 B0 01", 0x359: "04 00 00 00 01 50 4E",
                       0x35C: "80 00"}),
], ids=["over-voltage stops charging", "under-voltage stops discharging"])
def test_an_alarm_clears_the_flag_and_sends_the_stop_limit(lynk, alarms, expected):
    rig = lynk()
    rig.second(0)
    rig.second(1, alarms=alarms)
    rig.second(2)
    # Burst 2 carries second 1's report (burst n goes out before second n's 0x35A).
    assert rig.burst(2) == {**NORMAL_BURST, **expected}
    rig.second(3)
    assert rig.burst(3) == NORMAL_BURST  # the next report is normal: recovered


def test_an_alarm_that_turns_not_supported_ends(lynk, caplog):
    """Field 0 active once, then 3 ("not supported") as in the steady frame: the latest
    report does not mark it active, so it is not active."""
    rig = lynk()
    rig.second(0)
    with caplog.at_level(logging.INFO, logger="canbridge.under_test"):
        rig.second(1, alarms=GENERAL_35A)
        rig.second(2)
        assert rig.burst(2) == {**NORMAL_BURST, 0x351: "2F 02 00 00 00 00 B0 01",
                                0x359: "00 08 00 00 01 50 4E", 0x35C: "00 00"}
        rig.second(3)
        assert rig.burst(3) == NORMAL_BURST
    messages = [r.getMessage() for r in caplog.records]
    assert "charge disabled: alarm_general" in messages
    assert "charge enabled again" in messages


# -- the alarm report is part of freshness ------------------------------------------------------


@pytest.mark.parametrize("alarms", [None, "ABAAFEAFAAFA"], ids=["missing", "6 bytes"])
def test_no_valid_alarm_report_enables_nothing(lynk, alarms):
    rig = lynk()
    rig.seconds(8, alarms=alarms)
    assert bursts_from(rig, 0, 7) == [NO_REPORT_BURST] * 8
    assert rig.rig.sink.status()["state"] == "ok"  # values keep flowing


def test_an_alarm_report_that_stops_mid_run_disables_both_directions(lynk, caplog):
    rig = lynk()
    with caplog.at_level(logging.INFO, logger="canbridge.under_test"):
        for n in range(16):
            rig.second(n, alarms=STEADY_35A if n < 5 or n >= 12 else None)
        bursts = bursts_from(rig, 1, 15)
    # The last report before the gap came at T0 + 4.004: burst 9 (T0 + 9.003) is 4.999 s
    # later, still fresh; burst 10 is not. Second 12's report re-enables burst 13.
    assert bursts[:9] == [NORMAL_BURST] * 9
    assert bursts[9:12] == [NO_REPORT_BURST] * 3
    assert bursts[12:] == [NORMAL_BURST] * 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["charge disabled: no alarm report for 6.0 s",
                        "discharge disabled: no alarm report for 6.0 s"]


def test_status_says_why_while_the_alarm_report_is_stale(lynk):
    rig = lynk()
    for n in range(10):
        rig.second(n, alarms=STEADY_35A if n < 2 else None)
    rig.burst(9)
    status = rig.rig.sink.status()
    # The last report came at T0 + 1.004, burst 9 went out at T0 + 9.003.
    assert status["safety"] == ("charge disabled (no alarm report for 8.0 s); "
                                "discharge disabled (no alarm report for 8.0 s)")
    assert status["alarm_report_age"] == pytest.approx(7.999)


# -- plausibility --------------------------------------------------------------------------------


@pytest.mark.parametrize(("limits", "logged"), [
    (b"\xff" * 8, "charge_voltage_limit = 6553.5 V is outside 40..65 V"),
    (bytes(8), "charge_voltage_limit = 0 V is outside 40..65 V"),
    (struct.pack("<HHHH", 500, 2820, 2820, 520),
     "discharge_voltage_limit = 52 V is not below charge_voltage_limit = 50 V"),
], ids=["all FF", "all zero", "DVL above CVL"])
def test_implausible_limits_age_into_the_safe_state(lynk, caplog, limits, logged):
    rig = lynk()
    with caplog.at_level(logging.WARNING, logger="canbridge.under_test"):
        for n in range(10):
            rig.second(n, limits=NORMAL_351 if n < 3 else limits)
        bursts = bursts_from(rig, 1, 9)
    # The last plausible 0x351 came at T0 + 2.001; burst 7 (T0 + 7.003) is 5.002 s later.
    assert bursts[:6] == [NORMAL_BURST] * 6
    assert bursts[6:] == [SAFE_BURST] * 3  # CVL and DVL the last plausible ones, never 0
    status = rig.rig.sink.status()
    assert status["implausible"] == 7
    assert status["state"] == "safe"
    assert logged in caplog.text
    assert "last implausible values: " + logged in status["safety"]


# -- what the LYNK II cannot send, but another battery plugin or a transform can ---------------


@pytest.mark.parametrize(("values", "logged"), [
    ({"charge_current_limit": -5.0}, "charge_current_limit = -5 A is negative"),
    ({"discharge_current_limit": -0.1}, "discharge_current_limit = -0.1 A is negative"),
    ({"discharge_voltage_limit": 55.9},
     "discharge_voltage_limit = 55.9 V is not below charge_voltage_limit = 55.9 V"),
    ({"charge_voltage_limit": 43.0},
     "discharge_voltage_limit = 43.2 V is not below charge_voltage_limit = 43 V"),
], ids=["negative CCL", "negative DCL", "DVL alone, equal to the CVL", "CVL alone, below the DVL"])
def test_an_implausible_update_is_dropped_whole(lynk, caplog, values, logged):
    """A limit on its own is checked against the latest of the other (LYNK II limits are
    unsigned and come in one frame; a battery plugin's or a transform's need not)."""
    rig = lynk().rig  # fed updates straight, as such a plugin would
    with caplog.at_level(logging.WARNING):
        rig.feed(T0, {**LYNK_SAMPLE, **QUIET})
        rig.feed(T0 + 0.5, {**values, "soc": 10})
        rig.run_until(T0 + 1.0)
    model = rig.sink.model
    assert model.implausible == 1
    assert model.latest["soc"] == 72  # nothing of the dropped update is taken
    assert hexes(rig.bursts()[T0 + 1.0]) == NORMAL_BURST
    assert f"battery values ignored as implausible: {logged}" in caplog.text


def test_implausible_values_are_not_blamed_once_the_data_is_fresh_again(lynk):
    rig = lynk()
    rig.seconds(3)
    for n in range(3, 9):
        rig.second(n, limits=bytes(8))
    assert "last implausible values" in rig.rig.sink.status()["safety"]
    for n in range(9, 11):
        rig.second(n)
    rig.rig.run_until(T0 + 20.0)  # stale again, for want of any data this time
    status = rig.rig.sink.status()
    assert status["state"] == "safe"
    assert "implausible" not in status["safety"]


# -- profiles: stop by voltage, Sol-Ark, Sofar, overrides --------------------------------------


@pytest.mark.parametrize("profile", ["deye", "victron"])
@pytest.mark.parametrize(("voltage", "cvl"), [
    (53.5, "17 02"),  # CVL = the pack voltage, 53.5 V
    (56.3, "2F 02"),  # never above the battery's CVL (55.9 V)
    (42.0, "B0 01"),  # never below its DVL (43.2 V)
], ids=["at pack voltage", "clamped by CVL", "clamped by DVL"])
def test_stop_by_voltage_lowers_cvl_to_the_pack_voltage(lynk, profile, voltage, cvl):
    rig = lynk(inverter=profile)
    rig.second(0, voltage=voltage)
    rig.second(1, alarms=HIGH_VOLTAGE_35A, voltage=voltage)
    rig.second(2, voltage=voltage)
    burst = rig.burst(2)
    assert burst[0x351] == f"{cvl} 00 00 04 0B B0 01"
    assert burst[0x35C] == "40 00"
    rig.second(3, voltage=voltage)
    assert rig.burst(3)[0x351] == NORMAL_BURST[0x351]  # charging allowed: the battery's CVL


def test_stop_by_voltage_never_lifts_the_cvl_over_the_owners_cap(lynk):
    """A pack above `max_charge_voltage` (the cap lowered after a full charge): disabling
    charge must not send its voltage, which would raise the CVL charging gets."""
    rig = lynk(inverter="deye", max_charge_voltage=54.0)
    rig.second(0, voltage=55.0)
    rig.second(1, alarms=HIGH_VOLTAGE_35A, voltage=55.0)
    rig.second(2, voltage=55.0)
    assert rig.burst(2)[0x351] == "1C 02 00 00 04 0B B0 01"  # 54.0 V, not 55.0 V
    assert rig.burst(2)[0x35C] == "40 00"
    rig.second(3, voltage=55.0)
    assert rig.burst(3)[0x351] == "1C 02 04 0B 04 0B B0 01"  # charging: the cap, as before


def test_stop_by_voltage_also_follows_a_zero_charge_limit(lynk):
    rig = lynk(inverter="victron")
    rig.seconds(3, limits=struct.pack("<HHHH", 559, 0, 2820, 432), voltage=54.1)
    assert rig.burst(2)[0x351] == "1D 02 00 00 04 0B B0 01"  # 54.1 V, CCL 0
    assert rig.burst(2)[0x35C] == "40 00"


def test_sol_ark_gets_8_byte_frames_and_the_pack_voltage_in_decivolts(lynk):
    rig = lynk(inverter="sol-ark")
    rig.seconds(3)
    assert rig.burst(2) == {
        0x351: "2F 02 04 0B 04 0B B0 01",
        0x355: "48 00 64 00 00 00 00 00",
        0x356: "17 02 04 00 18 01 00 00",  # 53.5 V as 535, not 5350
        0x359: "00 00 00 00 01 50 4E 00",
        0x35C: "C0 00 00 00 00 00 00 00",
        0x35E: "50 59 4C 4F 4E 20 20 20",
    }


def test_sofar_stops_with_a_tenth_of_an_amp(lynk):
    rig = lynk(inverter="sofar")
    rig.second(0)
    assert rig.burst(0)[0x351] == "2F 02 01 00 01 00 B0 01"  # no report yet: both 0.1 A
    rig.second(1, alarms=HIGH_VOLTAGE_35A)
    rig.second(2)
    assert rig.burst(2)[0x351] == "2F 02 01 00 04 0B B0 01"
    assert rig.burst(2)[0x35C] == "40 00"


def test_an_explicit_option_overrides_the_profile(lynk):
    rig = lynk(inverter="deye", stop_charge_by="current", manufacturer="DISCOVER")
    assert (rig.rig.sink.config["stop_charge_by"], rig.rig.sink.config["manufacturer"]) == (
        "current", "DISCOVER")
    rig.second(0)
    rig.second(1, alarms=HIGH_VOLTAGE_35A)
    rig.second(2)
    assert rig.burst(2)[0x351] == "2F 02 00 00 04 0B B0 01"  # CVL stays 55.9 V
    solark = lynk(inverter="sol-ark", pad_to_8_bytes=False)
    solark.seconds(2)
    assert solark.burst(1)[0x356] == "17 02 04 00 18 01"  # 0.1 V kept, short frames


# -- every profile: the safety property ---------------------------------------------------------

CONDITIONS = sorted(f"{kind}_{c}" for kind in ("alarm", "warning") for c in (
    "general", "high_voltage", "low_voltage", "high_temp_discharge", "low_temp_discharge",
    "high_temp_charge", "low_temp_charge", "high_discharge_current", "high_charge_current",
    "internal", "cell_imbalance"))

battery_states = st.fixed_dictionaries({
    "charge_voltage_limit": st.integers(500, 600).map(lambda r: r / 10),
    "discharge_voltage_limit": st.integers(400, 499).map(lambda r: r / 10),
    "charge_current_limit": st.integers(0, 3000).map(lambda r: r / 10),
    "discharge_current_limit": st.integers(0, 3000).map(lambda r: r / 10),
    "voltage": st.integers(400, 650).map(lambda r: r / 10),
    "current": st.integers(-1000, 1000).map(lambda r: r / 10),
    "soc": st.integers(0, 100), "temperature": st.integers(-200, 600).map(lambda r: r / 10),
}, optional={"alarm_report": st.just("received")}).flatmap(
    lambda state: st.fixed_dictionaries(
        {name: st.booleans() for name in CONDITIONS}).map(lambda alarms: {**state, **alarms}))


@pytest.mark.parametrize("profile", profiles.names())
def test_no_profile_ever_sends_an_unsafe_burst(profile):
    rig = Rig(inverter=profile)
    stop = rig.sink.config["stop_current"]
    step = rig.sink.period

    @settings(max_examples=60, deadline=None)
    @given(states=st.lists(battery_states, min_size=1, max_size=4),
           gaps=st.lists(st.sampled_from([0.3, 1.0, 7.0]), min_size=4, max_size=4))
    def check(states: list[dict[str, Any]], gaps: list[float]) -> None:
        for state, gap in zip(states, gaps, strict=False):
            at = rig.clock.now() + gap
            rig.feed(at, state)
            rig.run_until(at + step)
            battery = rig.sink.model.latest
            sent = decode_burst(rig.last_burst())
            charge, discharge = bool(sent["flags"] & 0x80), bool(sent["flags"] & 0x40)
            bat_cvl, bat_dvl = battery["charge_voltage_limit"], battery[
                "discharge_voltage_limit"]
            assert sent["charge_voltage_limit"] > 0
            assert sent["charge_voltage_limit"] <= bat_cvl + 1e-9
            assert sent["charge_voltage_limit"] >= bat_dvl - 1e-9
            assert sent["discharge_voltage_limit"] >= bat_dvl - 1e-9
            for enabled, name in ((charge, "charge_current_limit"),
                                  (discharge, "discharge_current_limit")):
                if enabled:
                    assert 0 < sent[name] <= battery[name] + 1e-9, name
                else:
                    assert sent[name] == pytest.approx(stop), name

    try:
        check()
    finally:
        rig.close()


owner_limits = st.fixed_dictionaries({}, optional={
    "current_share": st.integers(1, 10).map(lambda n: n / 10),
    "max_charge_current": st.integers(0, 3000).map(lambda r: r / 10),
    "max_discharge_current": st.integers(0, 3000).map(lambda r: r / 10),
    "max_charge_voltage": st.integers(400, 650).map(lambda r: r / 10),
})


@settings(max_examples=150, deadline=None)
@given(profile=st.sampled_from(profiles.names()), options=owner_limits, state=battery_states)
def test_caps_and_a_current_share_only_ever_lower_the_battery_limits(profile, options, state):
    """Each current limit sent is the lowest of the battery's limit times the share and the
    cap, rounded down by less than a step; the CVL is never above the battery's, nor above
    the cap unless the DVL holds it up."""
    rig = Rig(inverter=profile, **options)
    try:
        config = rig.sink.config
        sent = decode_burst(one_burst(rig, state))
    finally:
        rig.close()
    for name, cap, flag in (("charge_current_limit", "max_charge_current", 0x80),
                            ("discharge_current_limit", "max_discharge_current", 0x40)):
        allowed = min(state[name] * config["current_share"],
                      math.inf if config[cap] is None else config[cap])
        if sent["flags"] & flag:
            assert allowed - 0.1 - 1e-9 < sent[name] <= allowed + 1e-9, name
        else:
            assert sent[name] == pytest.approx(config["stop_current"]), name
    cvl_cap = math.inf if config["max_charge_voltage"] is None else config["max_charge_voltage"]
    assert sent["charge_voltage_limit"] <= state["charge_voltage_limit"] + 1e-9
    assert sent["charge_voltage_limit"] <= max(cvl_cap, state["discharge_voltage_limit"]) + 1e-9


def test_the_sample_values_pass_every_profile_unchanged_but_for_the_layout():
    for profile in profiles.names():
        rig = Rig(inverter=profile)
        try:
            rig.feed(T0 + 0.5, LYNK_SAMPLE)
            rig.run_until(T0 + 1.5)
            sent = decode_burst(rig.last_burst())
        finally:
            rig.close()
        assert sent["flags"] == 0xC0, profile
        assert (sent["charge_current_limit"], sent["charge_voltage_limit"]) == (282.0, 55.9)


def test_a_battery_without_alarms_says_so_and_is_enabled():
    rig = Rig()
    try:
        no_alarms = {k: v for k, v in LYNK_SAMPLE.items() if k != "alarm_report"}
        rig.feed(T0 + 0.5, {**no_alarms, "alarm_report": "none"})
        rig.run_until(T0 + 1.5)
        assert hexes(rig.last_burst()) == NORMAL_BURST
        assert rig.sink.status()["alarms_supported"] is False
        # Saying nothing is not saying "none": later limits without it age the statement.
        for second in range(2, 9):
            rig.feed(T0 + second + 0.5, no_alarms)
        assert hexes(rig.last_burst()) == NO_REPORT_BURST
    finally:
        rig.close()


UNREAD = {"capacity_nominal": st.just(280), "manufacturer": st.just("Discover"),
          "alarm_custom": st.booleans(), "balancing_active": st.booleans()}


def sent_bytes(rig: Rig) -> list[tuple[float, int, bytes]]:
    return [(at, msg.arbitration_id, bytes(msg.data)) for at, msg in rig.sent]


def test_the_signals_an_inverter_sink_reads_are_all_its_decisions_depend_on():
    """Handed only the updates carrying a name of its `reads` (as the engine does), the sink
    sends exactly the bursts it sends when handed every update."""
    sliced = st.tuples(battery_states, st.fixed_dictionaries({}, optional=UNREAD)).map(
        lambda both: {**both[0], **both[1]}).flatmap(
        lambda state: st.lists(st.sampled_from(sorted(state)), min_size=1).map(
            lambda names: {name: state[name] for name in names}))

    @settings(max_examples=60, deadline=None)
    @given(first=battery_states, updates=st.lists(sliced, min_size=1, max_size=12))
    def check(first: dict[str, Any], updates: list[dict[str, Any]]) -> None:
        every, read_only = Rig(), Rig()
        try:
            for n, update in enumerate([first, *updates]):
                at = T0 + n
                for rig in (every, read_only):
                    rig.run_until(at)
                every.sink.on_update(Update(at, update))
                feed(read_only.sink, Update(at, update))
            for rig in (every, read_only):
                rig.run_until(T0 + len(updates) + 1.5)
            assert len(every.sent) >= 6
            assert sent_bytes(every) == sent_bytes(read_only)
        finally:
            every.close()
            read_only.close()

    check()
