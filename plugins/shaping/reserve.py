"""Transform `soc-reserve`: keep a backup reserve, and stop charging at a maximum SOC.

Discharge stops (DCL 0) at or below `min_soc` and resumes above `min_soc + hysteresis`;
charge stops (CCL 0) at or above `max_soc` and resumes below `max_soc - hysteresis`. A
cell-balancing hold in progress (`balancing_active`) overrides `max_soc`: the hold must
reach full for the cells to balance. The reserve follows the battery's real `soc`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from canbridge import Context, Number, Option, OptionError, Update
from canbridge.shaping import Bound, Shaper, SocGate, number


class SocReserve(Shaper):
    """Stops discharging at a reserve SOC and charging at a maximum SOC, with hysteresis."""

    type_name = "soc-reserve"
    summary = "stops discharging at min_soc and charging at max_soc, with hysteresis"
    observes = frozenset(("soc", "balancing_active"))
    options = (
        Option("min_soc", Number(min=0.0, max=100.0), default=None,
               help="discharge stops at or below this SOC (%): the backup reserve"),
        Option("max_soc", Number(min=0.0, max=100.0), default=None,
               help="charge stops at or above this SOC (%); a balancing hold overrides it"),
        Option("hysteresis", Number(min=0.0, max=50.0), 2.0,
               help="SOC (%) the battery must move back past a threshold before it resumes"),
    )

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[OptionError]:
        low, high = config["min_soc"], config["max_soc"]
        if low is None and high is None:
            yield OptionError("min_soc", "give min_soc, max_soc or both")
        elif low is not None and high is not None and high - low <= 2 * config["hysteresis"]:
            yield OptionError("max_soc", f"must be more than 2 x hysteresis above min_soc "
                                         f"({high:g} and {low:g})")

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        band = self.config["hysteresis"]
        self._discharge = SocGate(upper=False, band=band)
        self._charge = SocGate(upper=True, band=band)
        self._balancing = False

    @property
    def discharge_stopped(self) -> bool:
        return self._discharge.stopped

    @property
    def charge_stopped(self) -> bool:
        return self._charge.stopped

    def observe(self, update: Update) -> None:
        values = update.values
        if "balancing_active" in values:
            self._balancing = values["balancing_active"] is True
        soc = values.get("soc")
        if number(soc):
            self._discharge.follow(soc, self.config["min_soc"])  # type: ignore[arg-type]
            self._charge.follow(soc, self.config["max_soc"])  # type: ignore[arg-type]

    def bounds(self, update: Update, limits: Sequence[str]) -> dict[str, Bound]:
        out: dict[str, Bound] = {}
        if self.discharge_stopped:
            out["discharge_current_limit"] = (0.0, f"SOC at the {self.config['min_soc']:g} % "
                                                   "reserve")
        if self.charge_stopped and not self._balancing:
            out["charge_current_limit"] = (0.0, f"SOC at the {self.config['max_soc']:g} % "
                                                "maximum")
        return out

    def status(self) -> dict[str, Any]:
        return {**super().status(), "discharge_stopped": self.discharge_stopped,
                "charge_stopped": self.charge_stopped}
