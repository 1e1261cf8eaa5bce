"""The console sink: what a person watching the terminal sees."""

from __future__ import annotations

import io
import os
import threading
import time

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
    for second in (1, 2):  # a second apart, as live: each table is written before the next
        run_timers(clock, T0 + second)
        deadline = time.monotonic() + 5.0
        while sink.stream.getvalue().count("\n") < second and time.monotonic() < deadline:
            time.sleep(0.001)
    sink.stop()  # a last table, and what waits is written
    lines = sink.stream.getvalue().splitlines()
    line = "soc 72%  voltage 53.5V  current -0.2A  manufacturer DISCOVER" \
        " | active: warning_low_voltage"
    assert lines == [f"[1745512156.0] {line}", f"[1745512157.0] {line}",
                     f"[1745512157.0] {line}"]
    assert sink.status()["refreshes"] == 3


def test_a_terminal_that_stops_reading_never_holds_up_the_engine() -> None:
    """Ctrl-S in the terminal, or a stalled SSH link: writes block. The tables wait on the
    sink's own thread, only the newest of them, and the engine thread goes on."""
    clock = Clock(virtual=True, start=T0)
    sink = build(ConsoleSink, {"inputs": ["lynk"], "every_secs": 1.0}, clock=clock)
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stalled, os.fdopen(read_end, "rb") as reader:
        sink.stream = stalled
        feed(sink, Update(T0, {"manufacturer": "D" * 10_000}))
        engine = threading.Thread(target=run_timers, args=(clock, T0 + 100.0))
        engine.start()
        engine.join(5.0)  # 100 tables of 10 kB: 15 times what a pipe holds
        assert not engine.is_alive()
        feed(sink, Update(T0 + 100, {"manufacturer": "the newest"}))
        sink.refresh()
        received = b""
        while not received.endswith(b"manufacturer the newest | no alarms or warnings\n"):
            received += reader.read1(65536)
        sink.stop()
    assert sink.status()["refreshes"] == 102
    assert received.count(b"\n") < 10  # the tables that waited were replaced, not piled up


def test_before_any_data_it_says_it_is_waiting() -> None:
    sink = build(ConsoleSink, {"inputs": ["lynk"], "signals": ["soc"], "alarms": False})
    assert sink.render() == ["waiting for data"]
