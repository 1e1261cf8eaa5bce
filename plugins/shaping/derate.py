"""Transform `temperature-derate`: CCL (and DCL) capped by a curve of the battery temperature.

The curves are lists of [°C, A] points, linear between them, the end value beyond the ends.
A temperature that is missing or older than `stale_after_secs` derates to the curve's lowest
value: not knowing the temperature is never "no derating".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from canbridge import Context, Number, Option, OptionError, Update
from canbridge.shaping import POINTS, Bound, Curve, Shaper, check_curve, number


class TemperatureDerate(Shaper):
    """Caps the current limits by the battery temperature."""

    type_name = "temperature-derate"
    summary = "caps the charge (and discharge) current limit by a curve of the temperature"
    observes = frozenset(("temperature",))
    options = (
        Option("charge_curve", POINTS, default=None,
               help="[°C, A] points: the largest CCL at each temperature"),
        Option("discharge_curve", POINTS, default=None,
               help="[°C, A] points: the largest DCL at each temperature"),
        Option("stale_after_secs", Number(min=0.0, min_exclusive=True), 60.0,
               help="a temperature older than this counts as missing: the curve's lowest "
                    "value applies"),
    )

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[OptionError]:
        if config["charge_curve"] is None and config["discharge_curve"] is None:
            yield OptionError("charge_curve", "give charge_curve, discharge_curve or both")
        yield from check_curve("charge_curve", config["charge_curve"], "°C", "A")
        yield from check_curve("discharge_curve", config["discharge_curve"], "°C", "A")

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        self._curves = {limit: Curve(points) for limit, points in (
            ("charge_current_limit", self.config["charge_curve"]),
            ("discharge_current_limit", self.config["discharge_curve"])) if points}
        self._temperature: tuple[float, float] | None = None  # (time, °C)

    def observe(self, update: Update) -> None:
        temperature = update.values.get("temperature")
        if number(temperature):
            self._temperature = (update.timestamp, float(temperature))  # type: ignore[arg-type]

    def bounds(self, update: Update, limits: Sequence[str]) -> dict[str, Bound]:
        known = self._temperature
        fresh = (known is not None
                 and update.timestamp - known[0] <= self.config["stale_after_secs"])
        out: dict[str, Bound] = {}
        for name in limits:
            curve = self._curves.get(name)
            if curve is None:
                continue
            if fresh:
                out[name] = (curve(known[1]), f"{known[1]:g} °C on the derate curve")  # type: ignore[index]
            else:
                why = "no temperature" if known is None else "temperature stale"
                out[name] = (curve.lowest, f"{why}: the curve's lowest value")
        return out
