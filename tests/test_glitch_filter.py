"""The glitch-filter transform: spikes held, sustained excursions passed, options checked."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
from canbridge_plugins.glitch_filter import GlitchFilter

from canbridge import Update, Value
from canbridge.testing import build, capture

VOLTAGE_FILTER = {"inputs": ["lynk"], "signal": "voltage", "below": 48.0}


def config(**options: Any) -> dict[str, Any]:
    """The voltage filter's options changed by `options`; None removes an option."""
    return {k: v for k, v in {**VOLTAGE_FILTER, **options}.items() if v is not None}


def make_filter(**options: Any) -> tuple[GlitchFilter, list[Update]]:
    component = build(GlitchFilter, config(**options))
    return component, capture(component)


def feed(component: GlitchFilter, out: list[Update], signal: str,
         readings: list[float]) -> list[Value | None]:
    """Feed one update per reading, return what came out for `signal` (None: dropped)."""
    for index, reading in enumerate(readings):
        component.on_update(Update(100.0 + index, {signal: reading, "current": -9.5}))
    assert [u.timestamp for u in out] == [100.0 + i for i in range(len(readings))]
    assert all(u.values["current"] == -9.5 for u in out)
    return [u.values.get(signal) for u in out]


def test_single_dip_is_held_at_the_last_good_reading() -> None:
    component, out = make_filter()
    assert feed(component, out, "voltage", [53.5, 46.3, 53.4]) == [53.5, 53.5, 53.4]
    assert component.status() == {"state": "ok", "replaced": 1, "dropped": 0,
                                  "sustained": 0, "errors": 0}


def test_double_dip_is_held_too() -> None:
    component, out = make_filter()
    assert feed(component, out, "voltage", [53.5, 46.3, 46.4, 53.4]) == [
        53.5, 53.5, 53.5, 53.4]
    assert component.status()["replaced"] == 2


def test_sustained_drop_passes_from_the_samples_th_reading(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="canbridge")
    component, out = make_filter()
    held = feed(component, out, "voltage", [53.5, 47.0, 46.9])
    assert held == [53.5, 53.5, 53.5]
    assert component.status()["state"] == "holding"
    out.clear()
    for index, reading in enumerate([46.8, 46.7, 53.0]):
        component.on_update(Update(200.0 + index, {"voltage": reading}))
        if index == 0:
            assert component.status()["state"] == "ok"  # passing the real readings
    assert [u.values["voltage"] for u in out] == [46.8, 46.7, 53.0]
    assert [r.getMessage() for r in caplog.records] == [
        "under_test: voltage = 46.8 beyond its threshold for 3 readings in a row: "
        "passing the real readings"]
    assert component.status() == {"state": "ok", "replaced": 2, "dropped": 0,
                                  "sustained": 1, "errors": 0}


def test_a_good_reading_restarts_the_count() -> None:
    component, out = make_filter()
    assert feed(component, out, "voltage", [53.5, 46.0, 46.0, 53.4, 46.0, 46.0]) == [
        53.5, 53.5, 53.5, 53.4, 53.4, 53.4]
    assert component.status()["sustained"] == 0


def test_the_thresholds_themselves_are_not_beyond() -> None:
    component, out = make_filter(above=60.0)
    assert feed(component, out, "voltage", [53.5, 48.0, 60.0]) == [53.5, 48.0, 60.0]


def test_samples_one_lets_everything_through() -> None:
    component, out = make_filter(samples=1)
    assert feed(component, out, "voltage", [53.5, 46.3, 53.4]) == [53.5, 46.3, 53.4]


def test_above_holds_spikes_up() -> None:
    component, out = make_filter(signal="temperature", below=None, above=60.0, samples=2)
    assert feed(component, out, "temperature", [25.0, 99.0, 26.0, 99.0, 99.5]) == [
        25.0, 25.0, 26.0, 26.0, 99.5]


def test_below_and_above_together() -> None:
    component, out = make_filter(above=60.0)
    assert feed(component, out, "voltage", [53.5, 46.0, 70.0, 71.0, 53.0]) == [
        53.5, 53.5, 53.5, 71.0, 53.0]


def test_other_signals_and_updates_without_the_signal_pass_untouched() -> None:
    component, out = make_filter()
    component.on_update(Update(1.0, {"voltage": 53.5}))
    other = Update(2.0, {"soc": 72, "current": 0.4})
    component.on_update(other)
    component.on_update(Update(3.0, {"voltage": 46.1, "soc": 71, "alarm_low_voltage": False}))
    assert out[1] is other
    assert out[2] == Update(3.0, {"voltage": 53.5, "soc": 71, "alarm_low_voltage": False})


def test_a_first_reading_beyond_is_dropped_not_passed() -> None:
    component, out = make_filter()
    component.on_update(Update(1.0, {"voltage": 46.0, "current": 1.0, "temperature": 28.0}))
    component.on_update(Update(2.0, {"voltage": 46.0}))
    component.on_update(Update(3.0, {"voltage": 46.0}))
    assert out == [Update(1.0, {"current": 1.0, "temperature": 28.0}),
                   Update(3.0, {"voltage": 46.0})]
    assert component.status()["dropped"] == 2


def test_a_reading_that_is_not_a_finite_number_is_dropped_never_held() -> None:
    component, out = make_filter()
    component.on_update(Update(1.0, {"voltage": 53.5}))
    component.on_update(Update(2.0, {"voltage": math.nan, "soc": 72}))
    component.on_update(Update(3.0, {"voltage": math.inf}))
    component.on_update(Update(4.0, {"voltage": "53.5"}))
    component.on_update(Update(5.0, {"voltage": 46.1}))
    # A NaN is no good reading: the next glitch is still held at the last real one.
    assert out == [Update(1.0, {"voltage": 53.5}), Update(2.0, {"soc": 72}),
                   Update(5.0, {"voltage": 53.5})]
    assert component.status()["dropped"] == 3


@pytest.mark.parametrize(("options", "message"), [
    ({"below": None}, "below: give `below`, `above` or both: the filter needs a threshold"),
    ({"above": 40.0}, "above: must be greater than below (40 is not above 48)"),
    ({"above": 48.0}, "above: must be greater than below (48 is not above 48)"),
    ({"samples": 0}, "samples: 0 is out of range (>= 1)"),
    ({"samples": 2.5}, "samples: expected an integer, got 2.5"),
    ({"below": "48"}, "below: expected a number, got a string"),
    ({"signal": ""}, "signal: must not be empty"),
])
def test_option_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        build(GlitchFilter, config(**options))
    assert str(excinfo.value) == message


def test_missing_signal_is_reported() -> None:
    with pytest.raises(ValueError) as excinfo:
        build(GlitchFilter, config(signal=None))
    assert str(excinfo.value) == "signal: missing required option"
