"""The pipeline clock's timers: fixed rate, no drift, no catch-up bursts when live."""

from __future__ import annotations

import time

import pytest

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
    monotonic = [100.0]
    clock = Clock(real_time=lambda: monotonic[0])
    calls: list[float] = []
    timer = clock.every(1.0, lambda: calls.append(clock.now()))
    monotonic[0] = 105.5  # the engine was held up for five and a half periods
    assert clock.run_due(clock.now(), lambda t, e: None) == 1
    assert calls == [105.5]
    assert timer.due == 106.0  # the next call is on the original grid, after now
    monotonic[0] = 106.0
    clock.run_due(clock.now(), lambda t, e: None)
    assert calls == [105.5, 106.0]


def test_a_replay_skipping_a_gap_fires_nothing_in_it_and_keeps_the_timers_phase() -> None:
    clock = Clock(virtual=True, start=T0)
    calls: list[float] = []
    clock.every(1.0, lambda: calls.append(clock.now()), first=0.25)
    once = clock.after(3600.5, lambda: calls.append(-clock.now()))
    run_timers(clock, T0 + 2)
    clock.skip(86400.0)  # a capture that jumps a day ahead
    assert clock.now() == T0 + 86402 and once.due == T0 + 86400 + 3600.5
    run_timers(clock, T0 + 86404)
    assert calls == [T0 + 0.25, T0 + 1.25, T0 + 86402.25, T0 + 86403.25]


@pytest.mark.parametrize("period", [0.0, -1.0])
def test_a_timer_needs_a_positive_period(period: float) -> None:
    with pytest.raises(ValueError, match="timer period must be positive"):
        Clock(virtual=True).every(period, lambda: None)


def test_wall_time_is_unix_time_live_and_the_captures_own_in_a_replay() -> None:
    live = Clock(real_time=lambda: 500.0)
    before = time.time()
    assert before - 1 <= live.wall_time(499.0) <= time.time() - 1
    assert Clock(virtual=True, start=T0).wall_time() == T0
    assert Clock(virtual=True, start=T0, real_time=lambda: 7.0).real_now() == 7.0


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
