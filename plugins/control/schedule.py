"""Transform `schedule`: time-of-use windows that lower the limits while they are active.

Each window has `days` (mon..sun, default every day), `start` and `end` ("HH:MM", local time
in `timezone`; a window whose end is not after its start crosses midnight and belongs to the
day it starts on) and any of the control values (charge_current_max, discharge_current_max,
min_soc, charging, discharging). When several windows are active, the most restrictive value
of each wins. Times come from the pipeline clock, so a replayed week follows the windows as
it would have live; zoneinfo handles daylight saving time.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from canbridge import Context, ListOf, Number, Option, OptionError, Table, Text, Update, Value
from canbridge.schema import did_you_mean
from canbridge.shaping import Bound, Shaper, SocGate, number

from .limits import BY_NAME, bounds, describe, most_restrictive

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
WINDOW_KEYS = ("name", "days", "start", "end", *BY_NAME)


def _minutes(text: str) -> int:
    hours, minutes = TIME.fullmatch(text).groups()  # type: ignore[union-attr]
    return int(hours) * 60 + int(minutes)


class Window:
    __slots__ = ("days", "end", "label", "start", "values")

    def __init__(self, index: int, table: Mapping[str, Any]):
        self.days = {DAYS.index(day) for day in table.get("days", DAYS)}
        self.start = _minutes(table["start"])
        self.end = _minutes(table["end"])
        self.values: dict[str, Value] = {k: v for k, v in table.items() if k in BY_NAME}
        self.label = str(table.get("name") or f"window {index}")

    def active(self, local: datetime) -> bool:
        minute = local.hour * 60 + local.minute
        today = local.weekday()
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        # Crosses midnight: the part after midnight belongs to the day before.
        return ((today in self.days and minute >= self.start)
                or ((today - 1) % 7 in self.days and minute < self.end))


def _check_window(index: int, table: Mapping[str, Any]) -> Iterable[OptionError]:
    key = f"windows.{index}"
    for name in table:
        if name not in WINDOW_KEYS:
            yield OptionError(key, f"unknown key {name!r}{did_you_mean(name, WINDOW_KEYS)}")
    for name in ("start", "end"):
        value = table.get(name)
        if value is None:
            yield OptionError(key, f"needs {name} (\"HH:MM\")")
        elif not isinstance(value, str) or not TIME.fullmatch(value):
            yield OptionError(key, f"{name} {value!r} is not a time \"HH:MM\" (00:00-23:59)")
    days = table.get("days", list(DAYS))
    if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
        yield OptionError(key, f"days must be a list of {', '.join(DAYS)}")
    if table.get("start") is not None and table.get("start") == table.get("end"):
        yield OptionError(key, "start and end are the same time")
    for name, control in BY_NAME.items():
        if name in table:
            raw = table[name]
            if control.kind == "switch" and not isinstance(raw, bool):
                yield OptionError(key, f"{name} must be true or false")
                continue
            try:
                control.parse(str(raw).lower() if isinstance(raw, bool) else str(raw))
            except ValueError as exc:
                yield OptionError(key, f"{name}: {exc}")
    if not any(name in table for name in BY_NAME):
        yield OptionError(key, f"sets nothing: give any of {', '.join(BY_NAME)}")


class Schedule(Shaper):
    """Lowers the limits in time-of-use windows."""

    type_name = "schedule"
    summary = "time-of-use windows that lower the limits while they are active"
    observes = None  # it follows the clock on every update
    options = (
        Option("windows", ListOf(Table(), non_empty=True), help=(
            "[[transforms.NAME.windows]] tables: days, start, end (\"HH:MM\", may cross "
            "midnight) and any of charge_current_max, discharge_current_max, min_soc, "
            "charging, discharging")),
        Option("timezone", Text(non_empty=True), None,
               "IANA time zone of the windows, e.g. \"Europe/Berlin\" (unset: the system's)"),
        Option("hysteresis", Number(min=0.0, max=50.0), 2.0,
               "SOC (%) above a window's min_soc before discharging resumes"),
    )

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[OptionError]:
        for index, table in enumerate(config["windows"], start=1):
            yield from _check_window(index, table)
        zone = config["timezone"]
        if zone is not None:
            try:
                zoneinfo.ZoneInfo(zone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                yield OptionError("timezone", f"unknown time zone {zone!r}")

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        self.windows = [Window(i, t) for i, t in enumerate(self.config["windows"], start=1)]
        zone = self.config["timezone"]
        self.zone = zoneinfo.ZoneInfo(zone) if zone else None
        self._gate = SocGate(upper=False, band=self.config["hysteresis"])
        self._active: tuple[str, ...] = ()
        self._values: dict[str, Value | None] = {}
        self._checked_minute: float | None = None

    def local_time(self, timestamp: float) -> datetime:
        wall = self.clock.wall_time(timestamp)
        if self.zone is None:
            return datetime.fromtimestamp(wall).astimezone()
        return datetime.fromtimestamp(wall, self.zone)

    def _follow(self, timestamp: float) -> None:
        """Which windows are active (worked out once per wall-clock minute)."""
        minute = self.clock.wall_time(timestamp) // 60
        if minute == self._checked_minute:
            return
        self._checked_minute = minute
        local = self.local_time(timestamp)
        active = [w for w in self.windows if w.active(local)]
        labels = tuple(w.label for w in active)
        if labels != self._active:
            self._active = labels
            self._values = most_restrictive(w.values for w in active)
            if labels:
                self.log.info("schedule at %s: %s active: %s", local.strftime("%a %H:%M %Z"),
                              ", ".join(labels), describe(self._values))
            else:
                self.log.info("schedule at %s: no window active", local.strftime("%a %H:%M %Z"))

    def observe(self, update: Update) -> None:
        self._follow(update.timestamp)
        soc = update.values.get("soc")
        if number(soc):
            self._gate.follow(soc, self._values.get("min_soc"))  # type: ignore[arg-type]

    def bounds(self, update: Update, limits: Sequence[str]) -> dict[str, Bound]:
        if not self._active:
            return {}
        return bounds(self._values, self._gate.stopped, ", ".join(self._active))

    def status(self) -> dict[str, Any]:
        return {**super().status(), "windows_active": list(self._active),
                "values": describe(self._values) if self._active else "nothing"}


