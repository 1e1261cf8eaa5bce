"""derate-when-hot on its own, with canbridge.testing: no pipeline, no CAN, no waiting."""

from __future__ import annotations

import pytest
from canbridge_example.derate import DerateWhenHot
from hypothesis import given
from hypothesis import strategies as st

from canbridge import Clock, Update
from canbridge.testing import build, capture

OPTIONS = {"inputs": ["lynk"], "derate_from": 45.0, "zero_at": 55.0}


def derate(**options: float) -> tuple[DerateWhenHot, list[Update]]:
    transform = build(DerateWhenHot, {**OPTIONS, **options}, clock=Clock(virtual=True))
    return transform, capture(transform)


def limit_at(temperature: float, limit: float) -> float:
    transform, out = derate()
    transform.on_update(Update(1.0, {"temperature": temperature}))
    transform.on_update(Update(2.0, {"charge_current_limit": limit}))
    return out[-1].values["charge_current_limit"]


@pytest.mark.parametrize(("temperature", "expected"), [
    (20.0, 100.0), (45.0, 100.0), (46.0, 90.0), (50.0, 50.0), (53.5, 15.0), (55.0, 0.0),
    (70.0, 0.0)])
def test_the_limit_falls_linearly_between_the_two_temperatures(temperature, expected):
    assert limit_at(temperature, 100.0) == expected


def test_a_lowered_limit_is_rounded_down_to_a_tenth_of_an_ampere():
    assert limit_at(47.0, 282.0) == 225.6  # 282 A x 0.8 = 225.6 A
    assert limit_at(49.9, 33.3) == 16.9    # 33.3 A x 0.51 = 16.983 A


@given(temperature=st.floats(-40, 120), limit=st.floats(0, 1000))
def test_a_limit_is_never_raised(temperature, limit):
    assert limit_at(temperature, limit) <= limit


def test_other_signals_pass_untouched_in_the_same_update():
    transform, out = derate()
    transform.on_update(Update(1.0, {"temperature": 50.0, "soc": 80.0}))
    transform.on_update(Update(2.0, {"charge_current_limit": 100.0,
                                     "discharge_current_limit": 120.0}))
    assert out == [Update(1.0, {"temperature": 50.0, "soc": 80.0}),
                   Update(2.0, {"charge_current_limit": 50.0, "discharge_current_limit": 120.0})]


def test_without_a_temperature_the_limit_is_held_back():
    transform, out = derate()
    transform.on_update(Update(1.0, {"charge_current_limit": 100.0,
                                     "discharge_current_limit": 120.0}))
    transform.on_update(Update(1.5, {"charge_current_limit": 100.0}))
    assert out == [Update(1.0, {"discharge_current_limit": 120.0})]
    assert transform.status()["state"] == "waiting"
    assert transform.held_back == 2


def test_a_stale_temperature_holds_the_limit_back():
    transform, out = derate(stale_after_secs=10.0)
    transform.on_update(Update(100.0, {"temperature": 30.0}))
    transform.on_update(Update(110.0, {"charge_current_limit": 100.0}))  # 10 s old: fresh
    transform.on_update(Update(110.5, {"charge_current_limit": 100.0}))  # 10.5 s: stale
    assert [u.values for u in out[1:]] == [{"charge_current_limit": 100.0}]
    transform.clock.advance_to(110.5)
    assert transform.status()["state"] == "stale"


def test_status_reports_the_derating():
    transform, _ = derate()
    transform.on_update(Update(0.0, {"temperature": 48.0}))
    transform.on_update(Update(0.0, {"charge_current_limit": 100.0}))
    assert transform.status() == {"state": "derating", "temperature": 48.0, "factor": 0.7,
                                  "lowered": 1, "held_back": 0, "errors": 0}


def test_zero_at_must_be_above_derate_from():
    with pytest.raises(ValueError, match=r"zero_at: must be above derate_from \(40 is not "
                                         r"above 45\)"):
        derate(zero_at=40.0)
