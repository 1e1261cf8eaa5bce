"""The console sink: what a person watching the terminal sees."""

from __future__ import annotations

import contextlib
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


def test_on_a_terminal_the_table_is_redrawn_in_place() -> None:
    sink = build(ConsoleSink, {"inputs": ["lynk"], "alarms": False}, start=False)
    controller, terminal = os.openpty()
    with os.fdopen(terminal, "w") as stream:
        sink.stream = stream
        feed(sink, Update(T0, {"soc": 72, "temperature": 21.456, "balancing_active": True}))
        sink.stop()  # writes the last table
        shown = os.read(controller, 4096)
    os.close(controller)
    # Home, clear to the end of the screen, the table (the terminal turns \n into \r\n)
    assert shown == b"\x1b[H\x1b[Jsoc 72%  temperature 21.46\xc2\xb0C  balancing_active yes\r\n"


def test_a_terminal_gone_is_counted_never_raised() -> None:
    sink = build(ConsoleSink, {"inputs": ["lynk"]}, start=False)
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads any more: writes fail with EPIPE
    sink.stream = stream = os.fdopen(write_end, "w")
    feed(sink, Update(T0, {"soc": 72}))
    sink.stop()
    assert sink.status()["errors"] == 1
    with contextlib.suppress(BrokenPipeError):  # what it could not write is still buffered
        stream.close()


def test_before_any_data_it_says_it_is_waiting() -> None:
    sink = build(ConsoleSink, {"inputs": ["lynk"], "signals": ["soc"], "alarms": False})
    assert sink.render() == ["waiting for data"]
