"""The pipeline clock's timers: fixed rate, no drift, no catch-up bursts when live."""

from __future__ import annotations

import time

from canbridge import Clock
from canbridge.testing import run_timers

T0 = 1745512155.0


def test_a_periodic_timer_does_not_drift_over_a_day() -> None:
    clock = Clock(virtual=True, start=T0)
    calls: list[float] = []
    clock.every(0.1, lambda: calls.append(clock.now()))
    run_timers(clock, T0 + 86400)
    assert len(calls) == 864000
    # The n-th call is due at start + n·period, computed, not summed: no drift.
    assert calls[-1] == T0 + 864000 * 0.1
    assert calls[432000 - 1] == T0 + 432000 * 0.1


def test_timers_fire_in_due_order_and_once_timers_once() -> None:
    clock = Clock(virtual=True, start=T0)
    order: list[str] = []
    clock.every(1.0, lambda: order.append("every"))
    clock.after(1.5, lambda: order.append("after"))
    cancelled = clock.after(0.5, lambda: order.append("cancelled"))
    cancelled.cancel()
    run_timers(clock, T0 + 3)
    assert order == ["every", "after", "every", "every"]


def test_a_live_timer_skips_missed_calls_instead_of_bursting() -> None:
    clock = Clock()
    calls: list[float] = []
    timer = clock.every(0.01, lambda: calls.append(clock.now()))
    time.sleep(0.055)  # the engine was held up for about five periods
    clock.run_due(clock.now(), lambda t, e: None)
    assert len(calls) == 1
    # The next call is on the original grid, after now.
    assert timer.due > clock.now()
    assert abs((timer.due - timer.first) / 0.01 - round((timer.due - timer.first) / 0.01)) < 1e-6


def test_a_timer_with_slack_rides_on_another_wake_up() -> None:
    clock = Clock(virtual=True, start=0.0)
    fired: list[tuple[str, float]] = []
    clock.every(1.0, lambda: fired.append(("burst", clock.now())))
    clock.every(1.0, lambda: fired.append(("web", clock.now())), first=0.3, slack=1.0)
    assert clock.next_due() == 0.3  # a replay still runs it on time
    assert clock.wake_by() == 1.0  # live, nothing wakes the engine before the burst
    clock.run_due(1.0, lambda timer, exc: None)
    assert fired == [("web", 0.3), ("burst", 1.0)]
    assert clock.wake_by() == 2.0

    alone = Clock(virtual=True, start=0.0)
    alone.every(5.0, lambda: None, slack=1.0)
    assert alone.wake_by() == 6.0  # with nothing else to ride on, it wakes by its slack
