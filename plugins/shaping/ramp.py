"""Transform `limit-ramp`: increases of CCL, DCL and CVL spread out in time; decreases at once.

Inverters overshoot on a sudden jump of a limit (peer reports of Deye F14 faults; Discover
added "Dynamic Current" to LYNK II firmware 2.5 for this). The ramp starts from the first
value seen, so start-up is not a ramp from 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from canbridge import Context, Number, Option, Update
from canbridge.shaping import Bound, Shaper

RATES = {"charge_current_limit": "amps_per_sec", "discharge_current_limit": "amps_per_sec",
         "charge_voltage_limit": "volts_per_sec"}


class LimitRamp(Shaper):
    """Lets each limit rise at most at its rate; falls pass at once."""

    type_name = "limit-ramp"
    summary = "spreads increases of the current and charge voltage limits out in time"
    options = (
        Option("amps_per_sec", Number(min=0.0, min_exclusive=True), 10.0,
               "fastest rise of CCL and DCL, in A per second"),
        Option("volts_per_sec", Number(min=0.0, min_exclusive=True), 0.1,
               "fastest rise of CVL, in V per second"),
    )

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        self._last: dict[str, tuple[float, float]] = {}  # limit -> (time, value sent)

    def bounds(self, update: Update, limits: Sequence[str]) -> dict[str, Bound]:
        now = update.timestamp
        out: dict[str, Bound] = {}
        for name in limits:
            given = float(update.values[name])  # type: ignore[arg-type]
            last = self._last.get(name)
            sent = given
            if last is not None:
                rate = self.config[RATES[name]]
                allowed = last[1] + rate * max(0.0, now - last[0])
                if given > allowed:
                    sent = allowed
                    unit = "A" if RATES[name] == "amps_per_sec" else "V"
                    out[name] = (allowed, f"rising at most {rate:g} {unit}/s")
            self._last[name] = (now, sent)
        return out
