"""The console sink: what a person watching the terminal sees."""

from __future__ import annotations

import io

from canbridge_plugins.console import ConsoleSink

from canbridge import Clock, Update
from canbridge.testing import build, feed, run_timers

T0 = 1745512155.0


def test_the_table_shows_key_values_first_and_active_alarms() -> None:
    clock = Clock(virtual=True, start=T0)
    sink = build(ConsoleSink, {"inputs": ["lynk"], "every_secs": 1.0}, clock=clock)
    sink.stream = io.StringIO()
    feed(sink, Update(T0, {"voltage": 53.5, "soc": 72, "current": -0.2,
                               "manufacturer": "DISCOVER", "alarm_high_voltage": False,
                               "warning_low_voltage": True}))
    run_timers(clock, T0 + 2.0)
    lines = sink.stream.getvalue().splitlines()
    assert lines == [
        "[1745512156.0] soc 72%  voltage 53.5V  current -0.2A  manufacturer DISCOVER"
        " | active: warning_low_voltage",
        "[1745512157.0] soc 72%  voltage 53.5V  current -0.2A  manufacturer DISCOVER"
        " | active: warning_low_voltage",
    ]
    assert sink.status()["refreshes"] == 2


def test_before_any_data_it_says_it_is_waiting() -> None:
    sink = build(ConsoleSink, {"inputs": ["lynk"], "signals": ["soc"], "alarms": False})
    assert sink.render() == ["waiting for data"]
