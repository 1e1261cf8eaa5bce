"""What the control values mean for the limits, shared by `controls` and `schedule`.

charge_current_max / discharge_current_max cap CCL / DCL; charging / discharging off is the
stop limit (CCL or DCL 0: the inverter sink sends its stop limit and clears the flag);
min_soc stops discharging at or below it, resuming past the hysteresis.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from canbridge.controls import NUMBER, SWITCH, Control
from canbridge.shaping import Bound
from canbridge.signals import Value

CONTROLS = (
    Control("charge_current_max", NUMBER, "largest charge current limit", "A", 0.0, 3276.7,
            neutral=3276.7),
    Control("discharge_current_max", NUMBER, "largest discharge current limit", "A", 0.0,
            3276.7, neutral=3276.7),
    Control("min_soc", NUMBER, "discharge stops at or below this SOC", "%", 0.0, 100.0,
            neutral=0.0),
    Control("charging", SWITCH, "charging allowed"),
    Control("discharging", SWITCH, "discharging allowed"),
)
BY_NAME = {control.name: control for control in CONTROLS}

Values = Mapping[str, "Value | None"]


def bounds(values: Values, discharge_stopped: bool, source: str) -> dict[str, Bound]:
    """The limits `values` allow; `discharge_stopped` is min_soc's gate."""
    out: dict[str, Bound] = {}
    cap = values.get("charge_current_max")
    if values.get("charging") is False:
        out["charge_current_limit"] = (0.0, f"charging off ({source})")
    elif cap is not None:
        out["charge_current_limit"] = (float(cap), f"charge_current_max ({source})")
    cap = values.get("discharge_current_max")
    if values.get("discharging") is False:
        out["discharge_current_limit"] = (0.0, f"discharging off ({source})")
    elif discharge_stopped:
        out["discharge_current_limit"] = (0.0, f"SOC at min_soc {values['min_soc']:g} % "
                                               f"({source})")
    elif cap is not None:
        out["discharge_current_limit"] = (float(cap), f"discharge_current_max ({source})")
    return out


def most_restrictive(sets: Iterable[Values]) -> dict[str, Value | None]:
    """One set of values as strict as every one of `sets`: the lowest caps, the highest
    min_soc, a direction off when any set turns it off."""
    out: dict[str, Value | None] = {}
    for values in sets:
        for name, value in values.items():
            if value is None or name not in BY_NAME:
                continue
            old = out.get(name)
            if old is None:
                out[name] = value
            elif BY_NAME[name].kind == SWITCH:
                out[name] = bool(old) and bool(value)
            elif name == "min_soc":
                out[name] = max(old, value)  # type: ignore[type-var]
            else:
                out[name] = min(old, value)  # type: ignore[type-var]
    return out


def describe(values: Values) -> str:
    parts = []
    for name, value in values.items():
        if value is None:
            continue
        control = BY_NAME[name]
        if control.kind == SWITCH:
            parts.append(f"{name} {'on' if value else 'off'}")
        else:
            parts.append(f"{name} {value:g} {control.unit}")
    return ", ".join(parts) or "nothing"
