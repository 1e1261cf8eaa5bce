"""Transform `glitch-filter`: hold a signal at its last good reading through short spikes.

A reading beyond `below` / `above` is replaced by the last accepted reading until `samples`
readings in a row are beyond; from the `samples`-th on, the real readings pass. So a single
spurious 46.x V sample never reaches the inverter, while a real, sustained drop does.

- Readings beyond either threshold count towards the same run; a reading within both
  thresholds (a threshold itself included) ends the run and becomes the last accepted one.
- With no accepted reading yet, a reading beyond is removed from its update (the rest of the
  update passes): there is no good value to stand in, and a suspect one must not pass.
- Updates without the signal, and non-numeric values of it, pass unchanged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

from canbridge import Context, Integer, Number, Option, Text, Transform, Update, Value, hookimpl
from canbridge.signals import unknown_signal


class GlitchFilter(Transform):
    """Replaces short excursions of one signal beyond a threshold by its last good reading."""

    type_name = "glitch-filter"
    summary = "holds a signal at its last good reading through short excursions (glitches)"
    options = (
        Option("signal", Text(non_empty=True), help="the signal to filter, e.g. voltage"),
        Option("below", Number(), default=None,
               help="a reading below this is suspect (give below, above or both)"),
        Option("above", Number(), default=None,
               help="a reading above this is suspect (give below, above or both)"),
        Option("samples", Integer(min=1), default=3,
               help="readings in a row beyond a threshold before the real readings pass"),
    )

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        unknown = unknown_signal(config["signal"])
        if unknown:
            yield "signal", unknown
        below, above = config.get("below"), config.get("above")
        if below is None and above is None:
            yield "below", "give `below`, `above` or both: the filter needs a threshold"
        elif below is not None and above is not None and below >= above:
            yield "above", f"must be greater than below ({above:g} is not above {below:g})"

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        self._signal: str = self.config["signal"]
        self.reads = frozenset((self._signal,))
        self._below: float | None = self.config["below"]
        self._above: float | None = self.config["above"]
        self._samples: int = self.config["samples"]
        self._accepted: Value | None = None
        self._run = 0
        self.replaced = 0
        self.dropped = 0
        self.sustained = 0

    def on_update(self, update: Update) -> None:
        values = update.values
        signal = self._signal
        if signal not in values:
            self.emit(update)
            return
        value = values[signal]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            # Not a reading at all: never a good value to hold, never one to pass on.
            self.context.limited.warning(("not a number", signal),
                                         "%s: %s = %r is not a finite number; dropped",
                                         self.name, signal, value)
            self._drop(update)
            return
        if not self._beyond(value):
            self._run = 0
            self._accepted = value
            self.emit(update)
            return
        self._run += 1
        if self._run >= self._samples:
            if self._run == self._samples:
                self.sustained += 1
                self.context.limited.warning(
                    ("sustained", signal), "%s: %s = %g beyond its threshold for %d readings "
                    "in a row: passing the real readings", self.name, signal, value, self._run)
            self.emit(update)
        elif self._accepted is None:
            self._drop(update)  # no good reading to stand in yet: better none than a suspect one
        else:
            self.replaced += 1
            self.context.limited.log(logging.INFO, ("glitch", signal),
                                     "%s: %s = %g held at %g (reading %d of %d beyond)",
                                     self.name, signal, value, self._accepted, self._run,
                                     self._samples)
            self.emit(update.with_values({signal: self._accepted}))

    def _drop(self, update: Update) -> None:
        """Pass the update on without the filtered signal."""
        self.dropped += 1
        rest = {name: v for name, v in update.values.items() if name != self._signal}
        if rest:
            self.emit(Update(update.timestamp, rest))

    def _beyond(self, value: float) -> bool:
        below, above = self._below, self._above
        return (below is not None and value < below) or (above is not None and value > above)

    def status(self) -> dict[str, Any]:
        return {
            "state": "holding" if 0 < self._run < self._samples else "ok",
            "replaced": self.replaced,
            "dropped": self.dropped,
            "sustained": self.sustained,
            "errors": self.errors,
        }


@hookimpl
def canbridge_component_types() -> list[type]:
    return [GlitchFilter]
