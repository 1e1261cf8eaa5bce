"""The cell-balancing transform: a periodic hold of the SOC the inverter sees.

Some inverters (MidNite MN15 AIO) stop charging when the battery reports 100 %, but a
LiFePO4 bank balances its cells only during a long absorb at the charge voltage limit. When a
balance is due and the real SOC rises above `hold_soc`, this transform reports at most
`hold_soc` as `soc_reported` for `hold_minutes`, so the inverter keeps charging. Only
`soc_reported` changes: the battery's own limits and alarms pass through untouched, and the
hold never reports more than the real SOC.

A balance is due when none has completed yet, or `every_days` x 24 h after the last
completed hold *ended* (with a daily charge that crosses `hold_soc` at about the same time,
`every_days = 3` therefore gives a hold every 4th day; 2.9 gives every 3rd). A hold ends
early, not counted, on any alarm or when `soc` stops arriving for `stale_after_secs`. A rise
is a reading above `hold_soc` after one at or below it; the first reading after start-up or
after stale data counts as a rise too.

Durations are measured on the pipeline clock, so a replay balances exactly as live; the
state file stores wall-clock times, so a hold in progress survives a restart.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Mapping
from typing import Any, TypeGuard

from canbridge import (
    ALARM_REPORT,
    Context,
    Number,
    Option,
    Path,
    Timer,
    Transform,
    Update,
    Value,
    is_condition,
)
from canbridge.controls import BUTTON, Command, Control
from canbridge.locations import location_problem
from canbridge.signals import CONDITION_NAMES, names_where
from canbridge.writer import write_soon

from .state import (
    CorruptState,
    SavedState,
    dumps,
    iso,
    read_state,
    remove_leftover_temps,
    set_aside,
)

DAY_SECS = 86400.0
FUTURE_SLACK = 3600.0
"""A saved date more than this ahead of the wall clock is treated as unknown."""
BALANCE_NOW = Control("balance_now", BUTTON, "start a cell-balancing hold now")
STALE_SLACK = 1e-6
"""Timer due times on a Unix-time clock are exact only to a few ulps (~0.2 µs)."""


def _number(value: Value | None) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_alarm(name: str) -> bool:
    return name.startswith("alarm_") and is_condition(name)


def _duration(secs: float) -> str:
    return f"{secs / 60:.1f} min"


class CellBalancing(Transform):
    type_name = "cell-balancing"
    summary = ("holds the SOC reported to the inverter at hold_soc for a periodic long "
               "absorb that balances the cells")
    reads = frozenset(("soc", ALARM_REPORT, *filter(_is_alarm, CONDITION_NAMES)))
    options = (
        Option("every_days", Number(min=0, min_exclusive=True, max=365), 7.0,
               "days from the end of one completed balancing hold until the next is due"),
        Option("hold_soc", Number(min=1, max=100), 99.0,
               "SOC (%) reported at most during a hold; a hold starts when the SOC rises above it"),
        Option("hold_minutes", Number(min=0, min_exclusive=True, max=1440), 60.0,
               "how long the reported SOC is held"),
        Option("state_file", Path(non_empty=True), "/var/lib/canbridge/balancing.toml",
               "where the last balance and a hold in progress are kept across restarts",
               written=True),
        Option("stale_after_secs", Number(min=0, min_exclusive=True, max=3600), 5.0,
               "a hold ends early when no soc arrives for this long"),
    )

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        if config["hold_minutes"] * 60.0 >= config["every_days"] * DAY_SECS:
            yield "hold_minutes", (f"a hold of {config['hold_minutes']:g} min is not shorter "
                                   f"than every_days ({config['every_days']:g} days)")

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        self.every_secs = float(config["every_days"]) * DAY_SECS
        self.hold_soc = float(config["hold_soc"])
        self.hold_secs = float(config["hold_minutes"]) * 60.0
        self.stale_after = float(config["stale_after_secs"])
        path = pathlib.Path(config["state_file"]).expanduser()
        self.path = path if path.is_absolute() else pathlib.Path(context.pipeline_dir) / path
        self.updates_in = 0
        self._saved = SavedState()
        self._hold_end: float | None = None  # pipeline time the hold in progress completes
        self._hold_timer: Timer | None = None
        self._stale_timer: Timer | None = None
        self._soc_at = self.clock.now()  # last soc (start-up before the first one)
        self._soc: Value | None = None  # the last real soc
        # None after start-up or stale data: the next reading above hold_soc counts as a rise
        self._previous_soc: float | None = None
        self._alarms: set[str] = set()
        self._due_now = False  # balance_now pressed: due whatever the last balance says
        self.cannot_record: str | None = None
        context.controls.offer(BALANCE_NOW, self._balance_now, None)

    @property
    def holding(self) -> bool:
        return self._hold_end is not None

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        now = self.clock.now()
        self._soc_at = now
        self.cannot_record = location_problem(self.path)
        if self.cannot_record:
            self.log.warning("balancing will not start a hold it cannot record (%s); the "
                             "bridge goes on without balancing", self.cannot_record)
        for temp in remove_leftover_temps(self.path):
            self.log.info("removed %s, left by an interrupted state file write", temp)
        self._saved = self._load()
        started = self._saved.hold_started
        if started is not None:
            # a wall clock that went backwards must not lengthen the hold
            remaining = self.hold_secs - max(0.0, self.clock.wall_time(now) - started)
            if remaining <= 0:
                self._complete_at(started + self.hold_secs, " while canbridge was stopped")
            else:
                self._begin(remaining)
                self.log.info("balancing hold resumed after a restart: %s left",
                              _duration(remaining))
        self._stale_timer = self.clock.after(self.stale_after, self._check_stale)
        last = self._saved.last_end
        self.log.info("cell balancing: last balanced %s, next due %s, state file %s",
                      "never" if last is None else iso(last), iso(self._next_due(now)),
                      self.path)

    def stop(self) -> None:
        # a hold in progress stays in the state file: the next start resumes it
        for timer in (self._hold_timer, self._stale_timer):
            if timer is not None:
                timer.cancel()
        self._hold_timer = self._stale_timer = None

    # -- updates --------------------------------------------------------------------------

    def on_update(self, update: Update) -> None:
        self.updates_in += 1
        values = update.values
        ended = self._apply_alarms(values)
        soc = values.get("soc")
        if _number(soc):
            self._on_soc(soc)
        if ended or _number(soc):
            update = update.with_values(self._signals())
        self.emit(update)

    def _apply_alarms(self, values: Mapping[str, Value]) -> bool:
        """Track active alarms; end a hold when one is on. True when a hold ended.

        An alarm report replaces the previous one whole (signals.md)."""
        names = names_where(_is_alarm, tuple(values))
        if ALARM_REPORT in values:
            self._alarms = {key for key in names if values[key] is True}
        else:
            for key in names:
                if values[key] is True:
                    self._alarms.add(key)
                else:
                    self._alarms.discard(key)
        if self._alarms and self.holding:
            self._end_early(", ".join(sorted(self._alarms)) + " active")
            return True
        return False

    def _on_soc(self, soc: float) -> None:
        now = self.clock.now()
        self._soc_at = now
        self._soc = soc
        if self._stale_timer is None:
            self._stale_timer = self.clock.after(self.stale_after, self._check_stale)
        previous = self._previous_soc
        self._previous_soc = soc
        rose = soc > self.hold_soc and (previous is None or previous <= self.hold_soc)
        if (rose and not self.holding and not self._alarms and not self.cannot_record
                and self._due(now)):
            self._start_hold(now, f"SOC {soc:g} % rose above {self.hold_soc:g} %")

    def _start_hold(self, now: float, why: str) -> None:
        self._due_now = False
        self._begin(self.hold_secs)
        self._save(SavedState(self._saved.last_end, self.clock.wall_time(now)))
        self.log.info("balancing hold started: %s; reporting at most %g %% for %s", why,
                      self.hold_soc, _duration(self.hold_secs))

    # -- the hold -------------------------------------------------------------------------

    def _begin(self, remaining: float) -> None:
        self._hold_end = self.clock.now() + remaining
        self._hold_timer = self.clock.after(remaining, self._complete)

    def _clear_hold(self) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        self._hold_timer = None
        self._hold_end = None

    def _complete(self) -> None:
        now = self.clock.now()
        self._clear_hold()
        self._complete_at(self.clock.wall_time(now))
        self.emit(Update(now, self._signals()))

    def _complete_at(self, end_wall: float, note: str = "") -> None:
        self._save(SavedState(last_end=end_wall))
        self.log.info("balancing hold completed%s at %s; next due %s", note, iso(end_wall),
                      iso(end_wall + self.every_secs))

    def _end_early(self, reason: str) -> None:
        held = self.hold_secs - self._remaining()
        self._clear_hold()
        self._save(SavedState(self._saved.last_end))
        self.log.warning("balancing hold ended early after %s, not counted as done: %s",
                         _duration(held), reason)

    def _check_stale(self) -> None:
        now = self.clock.now()
        deadline = self._soc_at + self.stale_after
        if now < deadline - STALE_SLACK:  # soc arrived since this timer was set
            self._stale_timer = self.clock.after(deadline - now, self._check_stale)
            return
        self._stale_timer = None
        self._previous_soc = None
        if self.holding:
            self._end_early(f"battery data stale (no soc for {self.stale_after:g} s)")
            self.emit(Update(now, self._signals()))

    def _due(self, now: float) -> bool:
        last = self._saved.last_end
        wall = self.clock.wall_time(now)
        if last is not None and last > wall + FUTURE_SLACK:
            # Recorded while the wall clock was ahead (an NTP step at boot): unknown, not a
            # reason to wait years for the next balance.
            self.log.warning("last balance %s is in the future: treated as unknown, "
                             "balancing is due", iso(last))
            self._saved = SavedState(None, self._saved.hold_started)
            last = None
        return self._due_now or last is None or wall >= last + self.every_secs

    def _balance_now(self, command: Command) -> None:
        """The balance_now button: a hold now if the SOC is above hold_soc, else due now,
        so the next rise above hold_soc starts one. A press during a hold does nothing."""
        if self.holding:
            self.log.info("balance now: a balancing hold is already running (%s left)",
                          _duration(self._remaining()))
            return
        self._due_now = True
        soc = self._soc
        if self.cannot_record:
            self.log.warning("balance now refused: the state file cannot be written (%s)",
                             self.cannot_record)
            return
        if isinstance(soc, int | float) and soc > self.hold_soc and not self._alarms:
            now = self.clock.now()
            self._start_hold(now, f"balance now pressed at SOC {soc:g} %")
            self.emit(Update(now, self._signals()))
        else:
            self.log.info("balance now: balancing is due; the hold starts when the SOC rises "
                          "above %g %%", self.hold_soc)

    def _next_due(self, now: float) -> float:
        """Wall time the next balance is due; "now" when none has ever completed."""
        last = self._saved.last_end
        return self.clock.wall_time(now) if last is None else last + self.every_secs

    def _remaining(self) -> float:
        if self._hold_end is None:
            return 0.0
        return round(max(0.0, self._hold_end - self.clock.now()), 3)

    def _signals(self) -> dict[str, Value]:
        """The balancing signals, and the SOC for the inverter once a real one is known.

        A hold that ends on a timer or an alarm sends the last real SOC at once, so a sink
        never shows the held value after the hold ended."""
        out: dict[str, Value] = {}
        if self._soc is not None:
            out["soc_reported"] = min(self._soc, self.hold_soc) if self.holding else self._soc
        out |= {
            "balancing_active": self.holding,
            "balancing_remaining": self._remaining(),
            "balancing_next_due": iso(self._next_due(self.clock.now())),
        }
        if self._saved.last_end is not None:
            out["balancing_last"] = iso(self._saved.last_end)
        return out

    # -- the state file -------------------------------------------------------------------

    def _load(self) -> SavedState:
        try:
            state = read_state(self.path)
            future = [t for t in (state.last_end, state.hold_started)
                      if t is not None and t > self.clock.wall_time() + FUTURE_SLACK]
            if future:
                raise CorruptState(f"{iso(future[0])} is in the future (the clock stepped "
                                   "back since it was written, or it was written by a clock "
                                   "that was wrong)")
            return state
        except FileNotFoundError:
            return SavedState()
        except CorruptState as exc:
            self.errors += 1
            try:
                where = f"moved to {set_aside(self.path)}"
            except OSError as err:
                where = f"could not move it aside: {err}"
            self.log.error("balancing state file %s is corrupt (%s), %s; treated as never "
                           "balanced", self.path, exc, where)
        except OSError as exc:
            self.errors += 1
            self.log.error("cannot read balancing state file %s (%s); treated as never "
                           "balanced", self.path, exc)
        return SavedState()

    def _save(self, state: SavedState) -> None:
        """Remember `state`; the file is written off the engine thread, in order, the newest
        replacing one not yet written (a stalled SD card never delays the inverter)."""
        self._saved = state
        write_soon(self.path, dumps(state), self._save_failed)

    def _save_failed(self, exc: OSError) -> None:  # the writer's thread
        self.errors += 1
        self.context.limited.error("state-file", "cannot write balancing state file %s: %s "
                                   "(balancing goes on, but a restart forgets it)",
                                   self.path, exc)

    def status(self) -> dict[str, Any]:
        now = self.clock.now()
        state = ("holding" if self.holding else "degraded" if self.cannot_record
                 else "due" if self._due(now) else "idle")
        last = self._saved.last_end
        age = now - self._soc_at
        return {
            "state": state,
            "balancing": state,
            "balancing_last": None if last is None else iso(last),
            "next_due": iso(self._next_due(now)),
            "remaining": self._remaining(),
            "updates_in": self.updates_in,
            "stale_secs": round(age - self.stale_after, 3) if age > self.stale_after else 0.0,
            "errors": self.errors,
        }
