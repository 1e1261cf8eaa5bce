"""Transform `charge-taper`: CCL capped as SOC (and, optionally, pack voltage) near full.

`soc_points` are [%, A] points (full current to 90 %, 50 A at 95 %, 20 A at 98 %, say);
`voltage_points` are [V, A] points on the pack voltage. Linear between points, the end value
beyond the ends; the lower of the two caps applies. The taper follows the battery's real
`soc`, never `soc_reported`, so a cell-balancing hold (which reports a lower SOC to the
inverter) does not lift it. Until `soc` (or `voltage`) is known, or once it is older than
`stale_after_secs`, the curve's lowest value applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from canbridge import Context, Number, Option, OptionError, Update
from canbridge.shaping import POINTS, Bound, Curve, Shaper, check_curve, number

INPUTS = {"soc_points": ("soc", "%"), "voltage_points": ("voltage", "V")}


class ChargeTaper(Shaper):
    """Caps the charge current limit near full."""

    type_name = "charge-taper"
    summary = "caps the charge current limit as the SOC (and pack voltage) approach full"
    observes = frozenset(signal for signal, _ in INPUTS.values())
    options = (
        Option("soc_points", POINTS, default=None,
               help="[%, A] points: the largest CCL at each SOC"),
        Option("voltage_points", POINTS, default=None,
               help="[V, A] points: the largest CCL at each pack voltage"),
        Option("stale_after_secs", Number(min=0.0, min_exclusive=True), 60.0,
               help="a SOC or voltage older than this counts as missing: the curve's lowest "
                    "value applies"),
    )

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[OptionError]:
        if config["soc_points"] is None and config["voltage_points"] is None:
            yield OptionError("soc_points", "give soc_points, voltage_points or both")
        for key, (_, unit) in INPUTS.items():
            yield from check_curve(key, config[key], unit, "A")

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        self._curves = {INPUTS[key][0]: Curve(points) for key in INPUTS
                        if (points := self.config[key])}
        self._seen: dict[str, tuple[float, float]] = {}  # signal -> (time, value)

    def observe(self, update: Update) -> None:
        for signal in self._curves:
            value = update.values.get(signal)
            if number(value):
                self._seen[signal] = (update.timestamp, float(value))  # type: ignore[arg-type]

    def bounds(self, update: Update, limits: Sequence[str]) -> dict[str, Bound]:
        if "charge_current_limit" not in limits:
            return {}
        caps: list[Bound] = []
        for signal, curve in self._curves.items():
            unit = INPUTS["soc_points" if signal == "soc" else "voltage_points"][1]
            seen = self._seen.get(signal)
            if seen is None or update.timestamp - seen[0] > self.config["stale_after_secs"]:
                caps.append((curve.lowest, f"{signal} unknown: the curve's lowest value"))
            else:
                caps.append((curve(seen[1]), f"{signal} {seen[1]:g} {unit} on the taper"))
        return {"charge_current_limit": min(caps)}
