"""What every charge-shaping transform shares: it only ever lowers a limit the battery gave.

A shaping transform (limit ramp, temperature derating, charge taper, SOC reserve, the
controls of Home Assistant, a schedule) says, per update, the most it allows for CCL, DCL or
CVL, and why. `Shaper` applies that: a limit the update carries becomes the lower of the
battery's value and the bound; a limit the update does not carry is never invented; DVL and
every other signal pass unchanged and in order. It adds `<name>_active` (true while it
lowered something) and reports what it changed last in `status()`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from canbridge.component import Context, Transform
from canbridge.schema import ListOf, Number, OptionError
from canbridge.signals import ACTIVE_SUFFIX, Update, Value

LOWERED: dict[str, tuple[str, str]] = {
    "charge_current_limit": ("CCL", "A"),
    "discharge_current_limit": ("DCL", "A"),
    "charge_voltage_limit": ("CVL", "V"),
}
"""The limits a shaper may lower, with their short label and unit for the operator."""

Bound = tuple[float, str]
"""The most a shaper allows for one limit, and why (for status and logs)."""


def number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


class Shaper(Transform):
    """Base of the shaping transforms: subclasses implement `bounds`."""

    observes: ClassVar[frozenset[str] | None] = frozenset()
    """The signals `observe` looks at; None when it must see every update. With the limits
    they are the shaper's `reads`: any other update passes it by unchanged."""

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        self.reads = None if self.observes is None else frozenset(LOWERED) | self.observes
        self.active_signal = f"{name}{ACTIVE_SUFFIX}"
        self.active = False
        self.last_change: str | None = None
        self.changed = 0
        self._last_limits: Update | None = None

    def observe(self, update: Update) -> None:
        """Every update first: note what the bounds depend on (temperature, soc, time)."""

    def bounds(self, update: Update, limits: Sequence[str]) -> Mapping[str, Bound]:
        """The bound on each of `limits` (those the update carries, after `observe`); a
        limit left out is not bounded."""
        raise NotImplementedError

    def on_update(self, update: Update) -> None:
        values = update.values
        self.observe(update)
        limits = [name for name in LOWERED if number(values.get(name))]
        if not limits:
            self.emit(update)
            return
        self._last_limits = Update(update.timestamp, {name: values[name] for name in limits})
        bounds = self.bounds(update, limits)
        changes: dict[str, Value] = {}
        said = []
        for name in limits:
            bound = bounds.get(name)
            given = values[name]
            if bound is not None and bound[0] < given:  # type: ignore[operator]
                lowered = max(bound[0], 0.0)
                changes[name] = lowered
                label, unit = LOWERED[name]
                said.append(f"{label} {given:g} → {lowered:g} {unit}: {bound[1]}")
        if changes:
            self.changed += 1
            self.last_change = "; ".join(said)
        self.active = bool(changes)
        self.emit(Update(update.timestamp, {**values, **changes,
                                            self.active_signal: self.active}))

    def reshape(self) -> None:
        """The bounds changed between updates (a command, say): send the battery's last
        limits again, bounded anew. They keep their own timestamp, so nothing downstream
        takes them for fresher data than they are."""
        if self._last_limits is not None:
            self.on_update(self._last_limits)

    def status(self) -> dict[str, Any]:
        return {"state": "active" if self.active else "idle", "errors": self.errors,
                "updates_changed": self.changed, "last_change": self.last_change}


POINTS = ListOf(ListOf(Number(), non_empty=True))
"""Kind of a curve option: a list of [x, y] points."""


class Curve:
    """A piecewise-linear curve through points sorted by x; beyond the ends, the end value."""

    __slots__ = ("xs", "ys")

    def __init__(self, points: Iterable[Sequence[float]]):
        pairs = sorted((float(x), float(y)) for x, y in points)
        self.xs = [x for x, _ in pairs]
        self.ys = [y for _, y in pairs]

    @property
    def lowest(self) -> float:
        return min(self.ys)

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1]:
            return ys[-1]
        i = bisect.bisect_right(xs, x)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def check_curve(key: str, points: Sequence[Sequence[float]] | None, x_unit: str,
                y_unit: str) -> Iterable[OptionError]:
    """Problems with a curve option: each point [x, y], x distinct, y >= 0."""
    if points is None:
        return
    if not points:
        yield OptionError(key, f"give at least one [{x_unit}, {y_unit}] point")
        return
    for index, point in enumerate(points, start=1):
        if len(point) != 2:
            yield OptionError(key, f"point {index}: expected [{x_unit}, {y_unit}], "
                                   f"got {len(point)} numbers")
            return
        if point[1] < 0:
            yield OptionError(key, f"point {index}: {point[1]:g} {y_unit} is negative")
    xs = [point[0] for point in points]
    if len(set(xs)) != len(xs):
        yield OptionError(key, f"two points at the same {x_unit}")


class SocGate:
    """A stop with hysteresis on SOC: `low` stops at or below a threshold and resumes above
    it plus the band; `high` stops at or above it and resumes below it minus the band."""

    __slots__ = ("band", "stopped", "threshold", "upper")

    def __init__(self, *, upper: bool, band: float):
        self.upper = upper
        self.band = band
        self.threshold: float | None = None
        self.stopped = False

    def follow(self, soc: float, threshold: float | None) -> None:
        """Move with a new SOC (and the threshold now in force); `stopped` says the result."""
        if threshold != self.threshold:
            self.threshold = threshold
            self.stopped = False
        if threshold is None:
            return
        if self.upper:
            if soc >= threshold:
                self.stopped = True
            elif soc < threshold - self.band:
                self.stopped = False
        elif soc <= threshold:
            self.stopped = True
        elif soc > threshold + self.band:
            self.stopped = False
