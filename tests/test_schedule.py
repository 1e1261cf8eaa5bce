"""Time-of-use windows on the pipeline clock: midnight, both DST changes of a European and an
American zone, the most restrictive window winning, and bad windows refused."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from canbridge_plugins.control import Schedule

from canbridge import Clock, Update
from canbridge.testing import build, capture

LIMITS = {"charge_voltage_limit": 55.9, "charge_current_limit": 282.0,
          "discharge_current_limit": 282.0, "discharge_voltage_limit": 43.2}


def schedule(zone: str, *windows: dict[str, Any]) -> tuple[Schedule, list[Update]]:
    component = build(Schedule, {"inputs": ["lynk"], "timezone": zone,
                                 "windows": list(windows)}, name="tou",
                      clock=Clock(virtual=True, start=0.0))
    return component, capture(component)


def limits_at(component: Schedule, out: list[Update], zone: str, *when: int,
              fold: int = 0) -> tuple[float, float]:
    """CCL and DCL of an update at local time `when` (y, m, d, h, min) in `zone`."""
    ts = datetime(*when, tzinfo=ZoneInfo(zone), fold=fold).timestamp()
    component.clock.advance_to(ts)
    component.on_update(Update(ts, LIMITS))
    values = out[-1].values
    return values["charge_current_limit"], values["discharge_current_limit"]


PEAK = {"name": "peak", "days": ["mon", "tue", "wed", "thu", "fri"], "start": "16:00",
        "end": "21:00", "charge_current_max": 20}


def test_a_weekday_window_starts_and_ends_on_the_minute():
    berlin = "Europe/Berlin"
    tou, out = schedule(berlin, PEAK)
    assert limits_at(tou, out, berlin, 2026, 12, 7, 15, 59) == (282.0, 282.0)  # Monday
    assert limits_at(tou, out, berlin, 2026, 12, 7, 16, 0) == (20.0, 282.0)
    assert out[-1].values["tou_active"] is True
    assert limits_at(tou, out, berlin, 2026, 12, 7, 20, 59) == (20.0, 282.0)
    assert limits_at(tou, out, berlin, 2026, 12, 7, 21, 0) == (282.0, 282.0)
    assert limits_at(tou, out, berlin, 2026, 12, 5, 17, 0) == (282.0, 282.0)  # Saturday


def test_a_window_across_midnight_belongs_to_the_day_it_starts():
    zone = "Europe/Berlin"
    tou, out = schedule(zone, {"days": ["fri"], "start": "22:00", "end": "06:00",
                               "discharging": False})
    assert limits_at(tou, out, zone, 2026, 12, 4, 5, 0) == (282.0, 282.0)  # Fri morning: Thu's
    assert limits_at(tou, out, zone, 2026, 12, 4, 22, 0) == (282.0, 0.0)  # Fri night
    assert limits_at(tou, out, zone, 2026, 12, 5, 5, 59) == (282.0, 0.0)  # Sat early
    assert limits_at(tou, out, zone, 2026, 12, 5, 6, 0) == (282.0, 282.0)
    assert limits_at(tou, out, zone, 2026, 12, 5, 23, 0) == (282.0, 282.0)  # Sat night


def test_a_sunday_night_window_reaches_into_monday(caplog):
    zone = "Europe/Berlin"
    tou, out = schedule(zone, {"name": "cheap", "days": ["sun"], "start": "23:00",
                               "end": "05:00", "charging": False})
    with caplog.at_level(logging.INFO):
        assert limits_at(tou, out, zone, 2026, 12, 6, 23, 30) == (0.0, 282.0)  # Sunday
        assert limits_at(tou, out, zone, 2026, 12, 7, 4, 59) == (0.0, 282.0)  # Monday
        assert limits_at(tou, out, zone, 2026, 12, 7, 5, 0) == (282.0, 282.0)
    assert [r.getMessage() for r in caplog.records] == [
        "schedule at Sun 23:30 CET: cheap active: charging off",
        "schedule at Mon 05:00 CET: no window active"]


def test_without_a_timezone_the_windows_follow_the_systems(monkeypatch, caplog):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        tou = build(Schedule, {"inputs": ["lynk"], "windows": [PEAK]}, name="tou",
                    clock=Clock(virtual=True, start=0.0))
        out = capture(tou)
        # 16:00 in New York: the window is on there (it would be 22:00 in Berlin)
        with caplog.at_level(logging.INFO):
            assert limits_at(tou, out, "America/New_York", 2026, 12, 7, 16, 0) == (20.0, 282.0)
        assert limits_at(tou, out, "America/New_York", 2026, 12, 7, 21, 0) == (282.0, 282.0)
        assert caplog.messages == [
            "schedule at Mon 16:00 EST: peak active: charge_current_max 20 A"]
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_most_restrictive_active_window_wins():
    zone = "America/New_York"
    tou, out = schedule(zone, {"start": "08:00", "end": "20:00", "charge_current_max": 100,
                               "min_soc": 30},
                        {"start": "12:00", "end": "14:00", "charge_current_max": 150,
                         "discharge_current_max": 50})
    assert limits_at(tou, out, zone, 2026, 6, 1, 13, 0) == (100.0, 50.0)
    assert tou.status()["windows_active"] == ["window 1", "window 2"]
    assert tou.status()["values"] == ("charge_current_max 100 A, min_soc 30 %, "
                                      "discharge_current_max 50 A")


def test_min_soc_in_a_window_stops_discharge_with_hysteresis():
    zone = "Europe/Berlin"
    tou, out = schedule(zone, {"start": "00:00", "end": "23:59", "min_soc": 40})
    ts = datetime(2026, 6, 1, 12, 0, tzinfo=ZoneInfo(zone)).timestamp()
    dcl = []
    for i, soc in enumerate([45, 40, 41, 42, 43]):
        tou.on_update(Update(ts + i, {**LIMITS, "soc": soc}))
        dcl.append(out[-1].values["discharge_current_limit"])
    assert dcl == [282.0, 0.0, 0.0, 0.0, 282.0]


def test_a_new_min_soc_starts_its_hysteresis_afresh():
    """Discharge stopped at the morning's 40 %; the afternoon's 30 % lets 31 % discharge at
    once, not only once the SOC has climbed past the morning's band."""
    zone = "Europe/Berlin"
    tou, out = schedule(zone, {"start": "00:00", "end": "12:00", "min_soc": 40},
                        {"start": "12:00", "end": "23:59", "min_soc": 30})
    noon = datetime(2026, 6, 1, 12, 0, tzinfo=ZoneInfo(zone)).timestamp()
    dcl = []
    for at, soc in ((noon - 60, 40), (noon, 31), (noon + 60, 30), (noon + 120, 31)):
        tou.clock.advance_to(at)
        tou.on_update(Update(at, {**LIMITS, "soc": soc}))
        dcl.append(out[-1].values["discharge_current_limit"])
    assert dcl == [0.0, 282.0, 0.0, 0.0]


# Both DST changes of 2026: Europe/Berlin on 29 March (02:00 CET -> 03:00 CEST) and 25 October
# (03:00 CEST -> 02:00 CET); America/New_York on 8 March (02:00 EST -> 03:00 EDT) and 1
# November (02:00 EDT -> 01:00 EST). A window 02:30-03:30 (Berlin) or 01:30-02:30 (New York).

def test_spring_forward_europe():
    zone = "Europe/Berlin"
    tou, out = schedule(zone, {"start": "02:30", "end": "03:30", "charging": False})
    assert limits_at(tou, out, zone, 2026, 3, 29, 1, 59)[0] == 282.0
    # 02:30 never happens; at 03:00 CEST (one real minute after 01:59 CET) it is on
    assert limits_at(tou, out, zone, 2026, 3, 29, 3, 0)[0] == 0.0
    assert limits_at(tou, out, zone, 2026, 3, 29, 3, 29)[0] == 0.0
    assert limits_at(tou, out, zone, 2026, 3, 29, 3, 30)[0] == 282.0


def test_fall_back_europe():
    zone = "Europe/Berlin"
    tou, out = schedule(zone, {"start": "02:30", "end": "03:30", "charging": False})
    assert limits_at(tou, out, zone, 2026, 10, 25, 2, 45, fold=0)[0] == 0.0  # CEST
    # the clocks go back to 02:00 CET: before 02:30 again, so off, then on once more
    assert limits_at(tou, out, zone, 2026, 10, 25, 2, 15, fold=1)[0] == 282.0
    assert limits_at(tou, out, zone, 2026, 10, 25, 2, 30, fold=1)[0] == 0.0
    assert limits_at(tou, out, zone, 2026, 10, 25, 3, 30)[0] == 282.0


def test_spring_forward_america():
    zone = "America/New_York"
    tou, out = schedule(zone, {"start": "01:30", "end": "02:30", "charge_current_max": 10})
    assert limits_at(tou, out, zone, 2026, 3, 8, 1, 29)[0] == 282.0
    assert limits_at(tou, out, zone, 2026, 3, 8, 1, 59)[0] == 10.0
    # one real minute later it is 03:00 EDT: the window (which ends at 02:30) is over
    assert limits_at(tou, out, zone, 2026, 3, 8, 3, 0)[0] == 282.0


def test_fall_back_america():
    zone = "America/New_York"
    tou, out = schedule(zone, {"start": "01:30", "end": "02:30", "charge_current_max": 10})
    assert limits_at(tou, out, zone, 2026, 11, 1, 1, 45, fold=0)[0] == 10.0  # EDT
    assert limits_at(tou, out, zone, 2026, 11, 1, 1, 15, fold=1)[0] == 282.0  # EST, again
    assert limits_at(tou, out, zone, 2026, 11, 1, 1, 45, fold=1)[0] == 10.0  # the hour repeats
    assert limits_at(tou, out, zone, 2026, 11, 1, 2, 30)[0] == 282.0


@pytest.mark.parametrize(("window", "message"), [
    ({"start": "25:00", "end": "06:00", "charging": False},
     "windows.1: start '25:00' is not a time"),
    ({"start": "22:00", "charging": False}, "windows.1: needs end"),
    ({"start": "22:00", "end": "06:00"}, "windows.1: sets nothing"),
    ({"start": "22:00", "end": "06:00", "days": ["mon", "friday"], "charging": False},
     "windows.1: days must be a list of mon"),
    ({"start": "22:00", "end": "22:00", "charging": False},
     "windows.1: start and end are the same time"),
    ({"start": "22:00", "end": "06:00", "charging": "no"},
     "windows.1: charging must be true or false"),
    ({"start": "22:00", "end": "06:00", "charge_current_max": -5},
     "windows.1: charge_current_max: -5 is out of range"),
    ({"start": "22:00", "end": "06:00", "chargin": False},
     "windows.1: unknown key 'chargin' (did you mean \"charging\"?)"),
])
def test_bad_windows_are_refused(window, message):
    with pytest.raises(ValueError) as excinfo:
        schedule("Europe/Berlin", window)
    assert message in str(excinfo.value)


def test_an_unknown_time_zone_is_refused():
    with pytest.raises(ValueError, match="timezone: unknown time zone 'Mars/Olympus'"):
        schedule("Mars/Olympus", PEAK)
