"""Charge shaping transforms: exact values at curve points, between them, beyond the ends,
for stale or missing inputs, ramps in virtual time, and the one rule they share."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from canbridge_plugins.shaping import ChargeTaper, LimitRamp, SocReserve, TemperatureDerate
from hypothesis import given, settings
from hypothesis import strategies as st

from canbridge import Clock, Update
from canbridge.controls import ControlBoard
from canbridge.testing import build, capture, run_timers
from canbridge.testing import feed as hand_over

LIMITS = {"charge_voltage_limit": 55.9, "charge_current_limit": 282.0,
          "discharge_current_limit": 282.0, "discharge_voltage_limit": 43.2}


def shaper(cls: type, name: str = "shape", **options: Any):
    component = build(cls, {"inputs": ["lynk"], **options}, name=name)
    return component, capture(component)


def feed(component, out, at: float, values: dict[str, Any]) -> dict[str, Any]:
    component.on_update(Update(at, values))
    return dict(out[-1].values)


# -- limit-ramp ----------------------------------------------------------------------------


def test_a_ramp_starts_from_the_first_value_and_spreads_rises_out():
    ramp, out = shaper(LimitRamp)  # the defaults: 10 A/s, 0.1 V/s
    assert feed(ramp, out, 0.0, {**LIMITS, "charge_current_limit": 20.0}) == {
        **LIMITS, "charge_current_limit": 20.0, "shape_active": False}
    # 20 -> 282 A: at most 10 A/s, so 30 A one second later, 50 A after three.
    assert feed(ramp, out, 1.0, LIMITS)["charge_current_limit"] == 30.0
    assert feed(ramp, out, 3.0, LIMITS)["charge_current_limit"] == 50.0
    assert ramp.status()["last_change"] == "CCL 282 → 50 A: rising at most 10 A/s"
    # a fall passes at once, and the next rise starts from there
    assert feed(ramp, out, 4.0, {**LIMITS, "charge_current_limit": 5.0})[
        "charge_current_limit"] == 5.0
    assert feed(ramp, out, 4.5, LIMITS)["charge_current_limit"] == 10.0
    got = feed(ramp, out, 60.0, LIMITS)
    assert got == {**LIMITS, "shape_active": False}  # caught up: unchanged, inactive


def test_a_ramp_limits_cvl_rises_to_volts_per_sec():
    ramp, out = shaper(LimitRamp, volts_per_sec=0.1)
    feed(ramp, out, 0.0, {**LIMITS, "charge_voltage_limit": 53.0})
    got = feed(ramp, out, 5.0, LIMITS)
    assert got["charge_voltage_limit"] == pytest.approx(53.5)
    assert got["shape_active"] is True
    assert feed(ramp, out, 6.0, {**LIMITS, "charge_voltage_limit": 52.0})[
        "charge_voltage_limit"] == 52.0


# -- temperature-derate ------------------------------------------------------------------------

CURVE = [[0, 20], [5, 100], [40, 282], [50, 100], [55, 0]]


@pytest.mark.parametrize(("temperature", "ccl"), [
    (-10.0, 20.0), (0.0, 20.0), (2.5, 60.0), (5.0, 100.0), (22.5, 191.0), (40.0, 282.0),
    (45.0, 191.0), (55.0, 0.0), (70.0, 0.0),
], ids=lambda v: str(v))
def test_derate_follows_the_curve_and_holds_its_ends(temperature, ccl):
    derate, out = shaper(TemperatureDerate, charge_curve=CURVE)
    got = feed(derate, out, 10.0, {**LIMITS, "temperature": temperature})
    assert got["charge_current_limit"] == pytest.approx(ccl)
    assert got["discharge_current_limit"] == 282.0  # no discharge curve: untouched
    assert got["shape_active"] is (ccl < 282.0)


def test_derate_reports_what_it_changed_and_why():
    derate, out = shaper(TemperatureDerate, charge_curve=[[0, 0], [10, 200]])
    feed(derate, out, 1.0, {**LIMITS, "temperature": 3.0})
    assert derate.status()["last_change"] == "CCL 282 → 60 A: 3 °C on the derate curve"
    assert derate.status()["state"] == "active"


def test_a_missing_or_stale_temperature_derates_to_the_lowest_value():
    derate, out = shaper(TemperatureDerate, charge_curve=CURVE,
                         discharge_curve=[[-20, 50], [0, 282]])  # stale after 60 s
    got = feed(derate, out, 0.0, LIMITS)  # no temperature yet
    assert (got["charge_current_limit"], got["discharge_current_limit"]) == (0.0, 50.0)
    feed(derate, out, 1.0, {"temperature": 40.0})
    assert feed(derate, out, 61.0, LIMITS)["charge_current_limit"] == 282.0  # 60 s: fresh
    got = feed(derate, out, 61.5, LIMITS)
    assert got["charge_current_limit"] == 0.0
    assert derate.status()["last_change"] == (
        "CCL 282 → 0 A: temperature stale: the curve's lowest value; "
        "DCL 282 → 50 A: temperature stale: the curve's lowest value")


# -- charge-taper -----------------------------------------------------------------------------

TAPER = [[90, 282], [95, 50], [98, 20]]


@pytest.mark.parametrize(("soc", "ccl"), [(20, 282.0), (90, 282.0), (92.5, 166.0),
                                          (95, 50.0), (98, 20.0), (100, 20.0)])
def test_taper_caps_ccl_by_soc(soc, ccl):
    taper, out = shaper(ChargeTaper, soc_points=TAPER)
    got = feed(taper, out, 1.0, {**LIMITS, "soc": soc})
    assert got["charge_current_limit"] == pytest.approx(ccl)
    assert got["discharge_current_limit"] == 282.0


def test_taper_follows_the_real_soc_during_a_balancing_hold():
    taper, out = shaper(ChargeTaper, soc_points=TAPER)
    got = feed(taper, out, 1.0, {**LIMITS, "soc": 98, "soc_reported": 95})
    assert got["charge_current_limit"] == 20.0
    assert got["soc_reported"] == 95


def test_taper_takes_the_lower_of_soc_and_voltage_and_fails_safe_without_them():
    taper, out = shaper(ChargeTaper, soc_points=TAPER,
                        voltage_points=[[54.0, 282], [55.2, 30]])
    assert feed(taper, out, 0.0, LIMITS)["charge_current_limit"] == 20.0  # neither known
    feed(taper, out, 1.0, {"soc": 90, "voltage": 55.2})
    assert feed(taper, out, 1.5, LIMITS)["charge_current_limit"] == 30.0


# -- soc-reserve ------------------------------------------------------------------------------


def test_reserve_stops_discharge_at_min_soc_and_resumes_past_the_hysteresis():
    reserve, out = shaper(SocReserve, min_soc=20.0, hysteresis=2.0)
    sequence = [(25, 282.0), (20, 0.0), (21, 0.0), (22, 0.0), (22.5, 282.0), (20.5, 282.0),
                (19, 0.0)]
    got = [feed(reserve, out, float(i), {**LIMITS, "soc": soc})["discharge_current_limit"]
           for i, (soc, _) in enumerate(sequence)]
    assert got == [dcl for _, dcl in sequence]


def test_reserve_stops_charge_at_max_soc_unless_a_balancing_hold_is_on():
    reserve, out = shaper(SocReserve, max_soc=90.0, hysteresis=2.0)
    assert feed(reserve, out, 0.0, {**LIMITS, "soc": 90})["charge_current_limit"] == 0.0
    assert feed(reserve, out, 1.0, {**LIMITS, "soc": 89})["charge_current_limit"] == 0.0
    assert feed(reserve, out, 2.0, {**LIMITS, "soc": 87.5})["charge_current_limit"] == 282.0
    feed(reserve, out, 3.0, {**LIMITS, "soc": 95})
    assert reserve.status()["charge_stopped"] is True
    got = feed(reserve, out, 4.0, {**LIMITS, "soc": 96, "balancing_active": True})
    assert got["charge_current_limit"] == 282.0  # the hold must reach full
    assert feed(reserve, out, 5.0, {**LIMITS, "balancing_active": False})[
        "charge_current_limit"] == 0.0


def test_the_controls_min_soc_stops_discharge_and_resumes_past_the_hysteresis():
    from canbridge_plugins.control import Controls

    board = ControlBoard()
    controls = build(Controls, {"inputs": ["x"], "hysteresis": 2.0}, controls=board)
    out = capture(controls)
    assert feed(controls, out, 0.0, {**LIMITS, "soc": 15})["discharge_current_limit"] == 282.0
    board.command(board.get("min_soc").parse("20"))  # set at run time: no reserve before
    sequence = [(25, 282.0), (20, 0.0), (21, 0.0), (22, 0.0), (22.5, 282.0), (20.5, 282.0),
                (19, 0.0)]
    got = [feed(controls, out, 1.0 + i, {**LIMITS, "soc": soc})["discharge_current_limit"]
           for i, (soc, _) in enumerate(sequence)]
    assert got == [dcl for _, dcl in sequence]


def test_a_command_replacing_a_timed_one_is_not_ended_by_the_first_ones_expiry():
    from canbridge_plugins.control import Controls

    board, clock = ControlBoard(), Clock(virtual=True, start=0.0)
    controls = build(Controls, {"inputs": ["x"]}, controls=board, clock=clock)
    board.command(board.get("charging").parse('{"value": "OFF", "for_minutes": 1}'))
    run_timers(clock, 30.0)
    board.command(board.get("charging").parse('{"value": "OFF", "for_minutes": 10}'))
    run_timers(clock, 61.0)
    assert (controls.value("charging"), board.value("charging")) == (False, False)
    run_timers(clock, 631.0)
    assert (controls.value("charging"), board.value("charging")) == (True, True)
    assert controls.status()["commands"] == 2


@pytest.mark.parametrize(("cls", "options", "message"), [
    (TemperatureDerate, {}, "charge_curve: give charge_curve, discharge_curve or both"),
    (TemperatureDerate, {"charge_curve": []}, "charge_curve: give at least one [°C, A] point"),
    (TemperatureDerate, {"charge_curve": [[0, 10, 3]]},
     "charge_curve: point 1: expected [°C, A], got 3 numbers"),
    (TemperatureDerate, {"charge_curve": [[0, -1]]}, "charge_curve: point 1: -1 A is negative"),
    (TemperatureDerate, {"discharge_curve": [[0, -1]]},
     "discharge_curve: point 1: -1 A is negative"),
    (ChargeTaper, {}, "soc_points: give soc_points, voltage_points or both"),
    (ChargeTaper, {"soc_points": [[90, 10], [90, 20]]}, "soc_points: two points at the same %"),
    (SocReserve, {}, "min_soc: give min_soc, max_soc or both"),
    (SocReserve, {"min_soc": 50.0, "max_soc": 53.0}, "max_soc: must be more than 2 x"),
])
def test_bad_options_are_refused(cls, options, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build(cls, {"inputs": ["lynk"], **options})


# -- the shared rule, as a property --------------------------------------------------------

SIGNALS = {
    "charge_voltage_limit": st.floats(48.0, 58.0),
    "charge_current_limit": st.floats(0.0, 400.0),
    "discharge_current_limit": st.floats(0.0, 400.0),
    "discharge_voltage_limit": st.floats(40.0, 48.0),
    "soc": st.floats(0.0, 100.0), "voltage": st.floats(40.0, 60.0),
    "temperature": st.floats(-20.0, 70.0), "balancing_active": st.booleans(),
    "alarm_high_voltage": st.booleans(), "manufacturer": st.just("DISCOVER")}
updates = st.lists(st.tuples(st.floats(0.0, 30.0), st.fixed_dictionaries({}, optional=SIGNALS)),
                   min_size=1, max_size=30)
few_at_a_time = st.lists(st.tuples(st.floats(0.0, 30.0), st.lists(
    st.sampled_from(sorted(SIGNALS)), max_size=2, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({name: SIGNALS[name] for name in names}))),
    min_size=1, max_size=30)
"""Updates of one or two signals each: a SOC alone, then limits alone, say."""


@settings(max_examples=200, deadline=None)
@given(order=st.permutations(range(4)), stream=updates)
def test_chained_in_any_order_no_limit_ever_rises(order, stream):
    makers = [
        lambda: build(LimitRamp, {"inputs": ["x"], "amps_per_sec": 5.0}, name="ramp"),
        lambda: build(TemperatureDerate, {"inputs": ["x"], "charge_curve": CURVE,
                                          "discharge_curve": [[0, 50], [20, 300]]},
                      name="derate"),
        lambda: build(ChargeTaper, {"inputs": ["x"], "soc_points": TAPER,
                                    "voltage_points": [[54, 300], [56, 10]]}, name="taper"),
        lambda: build(SocReserve, {"inputs": ["x"], "min_soc": 20.0, "max_soc": 95.0},
                      name="reserve"),
    ]
    chain = [makers[i]() for i in order]
    for upstream, downstream in itertools.pairwise(chain):
        upstream._emit = downstream.on_update
    out = capture(chain[-1])
    now = 0.0
    for gap, values in stream:
        now += gap
        chain[0].on_update(Update(now, values))
        got = out[-1].values
        assert got.keys() - values.keys() <= {"ramp_active", "derate_active", "taper_active",
                                              "reserve_active"}
        for name, value in values.items():
            if name in ("charge_current_limit", "discharge_current_limit",
                        "charge_voltage_limit"):
                assert 0.0 <= got[name] <= value
            else:
                assert got[name] == value  # DVL and every other signal unchanged
        assert list(got)[:len(values)] == list(values)  # in order, nothing invented


def every_shaper(clock: Clock, board: ControlBoard,
                 windows: tuple[dict[str, Any], dict[str, Any]] = ({}, {})) -> list[Any]:
    """One of each shaping transform, the controls and a two-window schedule among them."""
    from canbridge_plugins.control import Controls, Schedule

    day = [{"start": "00:00", "end": "12:00", "charge_current_max": 400, **windows[0]},
           {"start": "12:00", "end": "00:00", "charge_current_max": 400, **windows[1]}]
    return [
        build(LimitRamp, {"inputs": ["x"]}, name="ramp", clock=clock),
        build(TemperatureDerate, {"inputs": ["x"], "charge_curve": CURVE}, name="derate",
              clock=clock),
        build(ChargeTaper, {"inputs": ["x"], "soc_points": TAPER}, name="taper", clock=clock),
        build(SocReserve, {"inputs": ["x"], "min_soc": 20.0}, name="reserve", clock=clock),
        build(Controls, {"inputs": ["x"], "min_soc": 10.0}, name="control", clock=clock,
              controls=board),
        build(Schedule, {"inputs": ["x"], "timezone": "UTC", "windows": day}, name="tou",
              clock=clock),
    ]


@settings(max_examples=500, deadline=None)
@given(stream=few_at_a_time)
def test_each_shaper_handed_only_what_it_reads_emits_what_it_emits_handed_everything(stream):
    """As the engine hands updates over (those without a name a shaper reads pass it by),
    every shaper emits exactly the updates it emits when it is handed every one."""
    clocks = Clock(virtual=True, start=0.0), Clock(virtual=True, start=0.0)
    everything, routed = (every_shaper(clock, ControlBoard()) for clock in clocks)
    outs = [[capture(shaper) for shaper in shapers] for shapers in (everything, routed)]
    now = 0.0
    for gap, values in stream:
        now += gap
        for clock in clocks:
            run_timers(clock, now)
        for shaper in everything:
            shaper.on_update(Update(now, values))
        for shaper in routed:
            hand_over(shaper, Update(now, values))
    assert [[(u.timestamp, u.values) for u in out] for out in outs[0]] == [
        [(u.timestamp, u.values) for u in out] for out in outs[1]]
    assert routed[0].reads is not None and routed[-1].reads is None  # the schedule: all


command_values = {
    "charge_current_max": st.floats(0.0, 3276.7).map(lambda v: f"{v}"),
    "discharge_current_max": st.floats(0.0, 3276.7).map(lambda v: f"{v}"),
    "min_soc": st.floats(0.0, 100.0).map(lambda v: f"{v}"),
    "charging": st.sampled_from(["ON", "OFF"]),
    "discharging": st.sampled_from(["ON", "OFF"]),
}
commands = st.one_of(*(st.tuples(st.just(name), values, st.sampled_from(
    ["", ', "for_minutes": 0.05', ', "for_minutes": 2'])) for name, values in
    command_values.items()))
window_values = st.fixed_dictionaries({}, optional={
    "charge_current_max": st.integers(0, 400), "discharge_current_max": st.integers(0, 400),
    "min_soc": st.integers(0, 100), "charging": st.booleans(), "discharging": st.booleans()})


@settings(max_examples=150, deadline=None)
@given(order=st.permutations(range(6)), stream=updates,
       orders=st.lists(st.none() | commands, min_size=30, max_size=30),
       windows=st.tuples(window_values, window_values))
def test_controls_and_schedules_never_raise_a_limit_whatever_the_commands(order, stream,
                                                                          orders, windows):
    board = ControlBoard()
    clock = Clock(virtual=True, start=0.0)
    every = every_shaper(clock, board, windows)
    chain = [every[i] for i in order]
    for upstream, downstream in itertools.pairwise(chain):
        upstream._emit = downstream.on_update
    out = capture(chain[-1])
    now = 0.0
    for (gap, values), command in zip(stream, orders, strict=False):
        if command is not None:
            name, value, expiry = command
            board.command(board.get(name).parse(f'{{"value": "{value}"{expiry}}}'))
        now += gap
        run_timers(clock, now)  # expiries fire on the pipeline clock
        chain[0].on_update(Update(now, values))
        got = out[-1].values
        for name, value in values.items():
            if name in ("charge_current_limit", "discharge_current_limit",
                        "charge_voltage_limit"):
                assert 0.0 <= got[name] <= value
            else:
                assert got[name] == value
