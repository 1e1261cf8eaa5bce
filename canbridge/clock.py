"""The pipeline clock and its timers.

Live pipelines run on the monotonic clock. A replay at full speed runs on the capture's
own timestamps: the engine moves the clock forward frame by frame and fires every timer that
falls due on the way, so a day of data replays in seconds with timers behaving as live.
Plugins never call `time.time()` or `time.sleep()`; they ask the clock.

A timer whose moment does not matter to the second (a web snapshot, an MQTT state, a data-log
row) is given `slack`: live, it runs at the first wake-up after it is due (a frame, the
Pylontech burst) and wakes the engine itself only once its slack is used up, as the kernel's
timer slack does. An idle Pi then wakes once per burst, not once per timer.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable

SIDE_SLACK_SECS = 1.0
"""The slack of side features' timers (web, MQTT, data log, console): a second late is
nothing to them, and their wake-ups then ride on the inverter's bursts."""


class Timer:
    """A scheduled callback; `cancel()` it to stop it firing."""

    __slots__ = ("callback", "cancelled", "count", "due", "first", "period", "slack")

    def __init__(self, due: float, period: float | None, callback: Callable[[], None],
                 slack: float = 0.0):
        self.slack = slack
        self.first = due
        self.count = 0  # calls so far: the next is due at first + count·period, no float drift
        self.due = due
        self.period = period
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """Pipeline time in seconds, plus the timer queue the engine drives.

    `virtual=False`: time is `real_time()`, `time.monotonic` unless a test gives its own.
    `virtual=True`: time only moves when the engine calls `advance_to` (replay at full
    speed, and tests); `real_now()` still reads `real_time()`.
    """

    def __init__(self, *, virtual: bool = False, start: float = 0.0,
                 real_time: Callable[[], float] = time.monotonic):
        self.virtual = virtual
        self._real_time = real_time
        self._now = start
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now if self.virtual else self._real_time()

    def real_now(self) -> float:
        """Real monotonic time in seconds, whatever the pipeline time: what paces work whose
        only audience is people (at full speed, days of pipeline time pass in a minute)."""
        return self._real_time()

    def wall_time(self, at: float | None = None) -> float:
        """Unix time of pipeline time `at` (default now), for dates shown to people.

        A replay clock is already Unix time (capture timestamps); a live one is converted.
        """
        at = self.now() if at is None else at
        return at if self.virtual else at - self._real_time() + time.time()

    def every(self, period: float, callback: Callable[[], None],
              first: float | None = None, *, slack: float = 0.0) -> Timer:
        """Call `callback` every `period` seconds, first after `first` (default one period);
        live, each call may come up to `slack` seconds late, to share a wake-up.

        Fixed rate: the n-th call is due at start + first + (n-1)·period, without drift. On
        the live clock, calls missed while the engine was held up are skipped rather than
        made back to back (two Pylontech bursts at once help no inverter); on the virtual
        clock nothing is ever late, and every call happens.
        """
        if period <= 0:
            raise ValueError("timer period must be positive")
        return self._push(Timer(self.now() + (period if first is None else first),
                                period, callback, slack))

    def after(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Call `callback` once, `delay` seconds from now."""
        return self._push(Timer(self.now() + max(0.0, delay), None, callback))

    def _push(self, timer: Timer) -> Timer:
        heapq.heappush(self._timers, (timer.due, next(self._order), timer))
        return timer

    def next_due(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def wake_by(self) -> float | None:
        """When a live engine must wake at the latest for its timers: the earliest due time
        plus that timer's slack."""
        wakes = [due + timer.slack for due, _, timer in self._timers if not timer.cancelled]
        return min(wakes) if wakes else None

    def pop_due(self, until: float) -> tuple[float, Timer] | None:
        """The next timer due at or before `until` and its due time, or None.

        A periodic timer is rescheduled one period on before it is returned."""
        timers = self._timers
        while timers:
            due, _, timer = timers[0]
            if timer.cancelled:
                heapq.heappop(timers)
                continue
            if due > until:
                return None
            heapq.heappop(timers)
            if timer.period is not None:
                timer.count += 1
                next_due = timer.first + timer.count * timer.period
                if not self.virtual and next_due <= until:
                    timer.count = math.floor((until - timer.first) / timer.period) + 1
                    next_due = timer.first + timer.count * timer.period
                timer.due = next_due
                self._push(timer)
            return due, timer
        return None

    def skip(self, seconds: float) -> None:
        """Jump virtual time `seconds` ahead without firing what falls in between: every
        timer keeps its place relative to now (a replay skipping a gap in its capture)."""
        self._now += seconds
        timers = []
        for due, order, timer in self._timers:
            timer.due += seconds
            timer.first += seconds
            timers.append((due + seconds, order, timer))
        self._timers = timers  # the same order, shifted alike: still a heap

    def advance_to(self, when: float) -> None:
        """Move virtual time forward (never back)."""
        if when > self._now:
            self._now = when

    def run_due(self, until: float, on_error: Callable[[Timer, BaseException], None]) -> int:
        """Fire every timer due up to `until`, in order; virtual time follows each one."""
        timers = self._timers
        if timers and timers[0][0] > until:
            return 0  # the common case, once per replayed frame: nothing due yet
        fired = 0
        while (item := self.pop_due(until)) is not None:
            due, timer = item
            if self.virtual:
                self.advance_to(due)
            try:
                timer.callback()
            except Exception as exc:
                on_error(timer, exc)
            fired += 1
        return fired
