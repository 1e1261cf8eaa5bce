"""Transform `derate-when-hot`: lower the charge current limit while the battery is hot.

Between `derate_from` and `zero_at` (°C) the battery's own charge current limit is scaled
down linearly, to 0 A at `zero_at`. The transform only ever lowers the limit: at or below
`derate_from` the battery's value passes as it is, and a result is never above it.

The temperature and the limit arrive in different frames, so the latest temperature is kept.
A limit with no temperature to judge it by (none yet, or none for `stale_after_secs`) is held
back: downstream, the Pylontech sink then has no fresh limit (it sends nothing at start-up and
goes to its safe state later) rather than letting a hot battery charge at full current.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from canbridge import Context, Number, Option, Transform, Update, hookimpl

LIMIT = "charge_current_limit"
TEMPERATURE = "temperature"


class DerateWhenHot(Transform):
    """Scales `charge_current_limit` down between two temperatures."""

    type_name = "derate-when-hot"
    summary = "lowers the charge current limit linearly while the battery temperature is high"
    options = (
        Option("derate_from", Number(), default=45.0,
               help="temperature (°C) above which the charge current limit is lowered"),
        Option("zero_at", Number(), default=55.0,
               help="temperature (°C) at and above which the charge current limit is 0 A"),
        Option("stale_after_secs", Number(min=0, min_exclusive=True), default=10.0,
               help="a temperature older than this counts as unknown: the limit is held back"),
    )

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        if config["zero_at"] <= config["derate_from"]:
            yield "zero_at", (f"must be above derate_from ({config['zero_at']:g} is not above "
                              f"{config['derate_from']:g})")

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        self._from: float = self.config["derate_from"]
        self._zero: float = self.config["zero_at"]
        self._stale: float = self.config["stale_after_secs"]
        self._temperature: float | None = None
        self._temperature_at = 0.0
        self._derating = False
        self.lowered = 0
        self.held_back = 0

    def on_update(self, update: Update) -> None:
        values = update.values
        temperature = values.get(TEMPERATURE)
        if isinstance(temperature, int | float) and not isinstance(temperature, bool):
            self._temperature = float(temperature)
            self._temperature_at = update.timestamp
        if LIMIT not in values:
            self.emit(update)
            return
        factor = self._factor_at(update.timestamp)
        if factor is None:
            self.held_back += 1
            self.context.limited.warning("no temperature", "%s: no temperature within %g s: "
                                         "%s held back", self.name, self._stale, LIMIT)
            rest = {name: value for name, value in values.items() if name != LIMIT}
            if rest:
                self.emit(Update(update.timestamp, rest))
            return
        if (factor < 1.0) != self._derating:
            self._derating = factor < 1.0
            self.log.info("%s: %.1f °C: %s %s", self.name, self._temperature, LIMIT,
                          "lowered" if self._derating else "no longer lowered")
        if factor >= 1.0:
            self.emit(update)
            return
        limit = values[LIMIT]
        # Rounded down to 0.1 A (the Pylontech resolution; the 1e-6 keeps 69.99999999 A at
        # 70.0 A), and never above the battery's own limit.
        lowered = min(limit, math.floor(limit * factor * 10 + 1e-6) / 10)
        self.lowered += 1
        self.emit(update.with_values({LIMIT: lowered}))

    def _factor_at(self, now: float) -> float | None:
        """The share of the battery's limit allowed now, or None without a recent temperature."""
        if self._temperature is None or now - self._temperature_at > self._stale:
            return None
        share = (self._zero - self._temperature) / (self._zero - self._from)
        return min(1.0, max(0.0, share))

    def status(self) -> dict[str, Any]:
        factor = self._factor_at(self.clock.now())
        if factor is None:
            state = "waiting" if self._temperature is None else "stale"
        else:
            state = "derating" if factor < 1.0 else "ok"
        return {
            "state": state,
            "temperature": self._temperature,
            "factor": None if factor is None else round(factor, 3),
            "lowered": self.lowered,
            "held_back": self.held_back,
            "errors": self.errors,
        }


@hookimpl
def canbridge_component_types() -> list[type]:
    return [DerateWhenHot]
