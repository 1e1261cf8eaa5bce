"""Signal updates: what flows from sources through transforms to sinks.

Signal names are the vocabulary of `protocols/signals.md` (voltage, soc, alarm_high_voltage,
...). An update carries the values one event produced (one decoded frame, say), all with the
same timestamp on the pipeline clock; it is never partial.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping

from .schema import OptionError, did_you_mean

Value = float | int | bool | str
"""A signal value: a number in its physical unit, a flag, or text."""

ALARM_REPORT = "alarm_report"
"""Carried by every update that is an alarm report (everything one alarm frame says): its
value is REPORT_RECEIVED. A battery protocol without alarms says so explicitly by sending
REPORT_NONE with each update of its limits. A report replaces the previous one as a whole."""
REPORT_RECEIVED = "received"
REPORT_NONE = "none"
CONDITION_PREFIXES = ("alarm_", "warning_")
ACTIVE_SUFFIX = "_active"


CONDITIONS = ("general", "high_voltage", "low_voltage", "high_temp_discharge",
              "low_temp_discharge", "high_temp_charge", "low_temp_charge",
              "high_discharge_current", "high_charge_current", "internal", "cell_imbalance")
VOCABULARY = frozenset({
    "charge_voltage_limit", "charge_current_limit", "discharge_current_limit",
    "discharge_voltage_limit", "soc", "soh", "capacity_nominal", "capacity_remaining",
    "voltage", "current", "temperature", "manufacturer", "model", "firmware_version",
    "protocol_version", ALARM_REPORT,
    *(f"{kind}_{condition}" for kind in ("alarm", "warning") for condition in CONDITIONS),
    "soc_reported", "balancing_active", "balancing_remaining", "balancing_last",
    "balancing_next_due",
})
"""Every signal name of the battery vocabulary (protocols/signals.md). Transforms add
`<name>_active` of their own."""
CONDITION_NAMES = frozenset(name for name in VOCABULARY if name.startswith(CONDITION_PREFIXES)
                            and name != ALARM_REPORT)


def unknown_signal(name: str) -> str:
    """Why `name` is not a signal of the vocabulary (with "did you mean"), or "" when it is
    one, or a transform's `<name>_active`."""
    if name in VOCABULARY or name.endswith(ACTIVE_SUFFIX):
        return ""
    return f'"{name}" is not a signal of the vocabulary{did_you_mean(name, VOCABULARY)}'


def unknown_signal_warnings(key: str, names: Iterable[str]) -> list[OptionError]:
    """A warning for each of `names` outside the vocabulary: a typo shows nothing, ever,
    while a plugin's own source may emit any name."""
    return [OptionError(key, f"{problem}: nothing will show under it unless a plugin of "
                        "yours emits it", warning=True)
            for problem in map(unknown_signal, names) if problem]


def is_condition(name: str) -> bool:
    """An `alarm_<condition>` or `warning_<condition>` signal (not `alarm_report`)."""
    return name.startswith(CONDITION_PREFIXES) and name != ALARM_REPORT


class Update:
    """Signal values produced together at one pipeline-clock time. Treat as read-only:
    the same update is handed to every consumer; a transform emits a new one."""

    __slots__ = ("timestamp", "values")

    def __init__(self, timestamp: float, values: Mapping[str, Value]):
        self.timestamp = timestamp
        self.values = values

    def with_values(self, changes: Mapping[str, Value]) -> Update:
        """A copy with `changes` applied (added or replaced)."""
        return Update(self.timestamp, {**self.values, **changes})

    def __repr__(self) -> str:
        return f"Update({self.timestamp!r}, {dict(self.values)!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Update) and other.timestamp == self.timestamp
                and dict(other.values) == dict(self.values))

    __hash__ = None  # type: ignore[assignment]


def _has_conditions(values: Mapping[str, Value]) -> bool:
    """An alarm report, or alarms of the vocabulary outside one: what a view must track."""
    return ALARM_REPORT in values or not CONDITION_NAMES.isdisjoint(values)


@functools.lru_cache(maxsize=1024)
def names_where(predicate: Callable[[str], bool], names: tuple[str, ...]) -> tuple[str, ...]:
    """The names among `names` that `predicate` holds for. One frame type's updates always
    carry the same names, so this is worked out once per kind of update, not per update."""
    return tuple(name for name in names if predicate(name))


class LatestValues:
    """The latest value of every signal seen (a sink's view of the battery)."""

    __slots__ = ("_conditions", "_values")

    def __init__(self) -> None:
        self._values: dict[str, Value] = {}
        self._conditions: set[str] = set()  # the alarm_/warning_ names held now

    def apply(self, update: Update) -> None:
        """Take the update's values; an alarm report first forgets every alarm and warning
        the previous report set, so a condition it does not mention is no longer active."""
        values = update.values
        if _has_conditions(values):
            self._track_conditions(values)
        self._values.update(values)

    def _track_conditions(self, values: Mapping[str, Value]) -> Iterable[str]:
        """The conditions an update with alarms holds; the names it makes forgotten."""
        if ALARM_REPORT in values:
            forgotten = self._conditions - values.keys()
            for name in forgotten:
                del self._values[name]
            self._conditions = set(names_where(is_condition, tuple(values)))
            return forgotten
        self._conditions.update(names_where(is_condition, tuple(values)))  # rare
        return ()

    def active_conditions(self) -> frozenset[str]:
        """The alarm_* and warning_* conditions that are true now."""
        values = self._values
        return frozenset(name for name in self._conditions if values[name] is True)

    def get(self, name: str, default: Value | None = None) -> Value | None:
        return self._values.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __getitem__(self, name: str) -> Value:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def snapshot(self) -> dict[str, Value]:
        return dict(self._values)


class TimedValues(LatestValues):
    """LatestValues that also keep when each signal was last updated, for freshness (the
    stop model). A view that needs no times does not pay for them on every update."""

    __slots__ = ("_times", "last_update")

    def __init__(self) -> None:
        super().__init__()
        self._times: dict[str, float] = {}
        self.last_update: float | None = None
        """The pipeline time of the last update applied."""

    def apply(self, update: Update) -> None:
        # LatestValues.apply, and the times: inline, as every update of a view comes here.
        values = update.values
        if _has_conditions(values):
            for name in self._track_conditions(values):
                del self._times[name]
        self._values.update(values)
        self.last_update = update.timestamp
        self._times.update(dict.fromkeys(values, update.timestamp))

    def updated_at(self, name: str) -> float | None:
        return self._times.get(name)

    def fresh(self, names: tuple[str, ...] | list[str], now: float, max_age: float) -> bool:
        """True when every one of `names` was updated within `max_age` seconds of `now`."""
        times = self._times
        for name in names:
            ts = times.get(name)
            if ts is None or now - ts > max_age:
                return False
        return True
