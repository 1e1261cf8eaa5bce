"""The stop model every inverter sink shares: when the inverter may charge or discharge, and
the limits that go with that (protocols/signals.md: request flags, freshness, the safe state).

A sink (Pylontech over CAN, over RS485, ...) feeds its updates to `StopModel.accept` and asks
`decide` once per period for what the inverter gets now; it only encodes the answer. The
rules, in one place:

- A direction that is disabled carries its stop limit (0 A or `stop_current`): the flag and
  the limit never disagree. With `stop_charge_by = "voltage"` a disabled charge also lowers
  CVL to the pack voltage, rounded down, never above the CVL charging would get (the
  battery's, under the owner's cap) nor below the DVL.
- Alarm status is part of freshness: until the first alarm report, and whenever the last one
  is older than `stale_after_secs`, both directions are disabled, other values flowing.
- Implausible values (pack voltages outside the plausible range, DVL not below CVL, negative
  current limits) are not data: the update is dropped, counted and logged, and ages out.
- No limit is ever raised: caps only lower, values are rounded towards the safe side (CVL,
  CCL, DCL down, DVL up) on the grid of the field that carries them.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from canbridge import profiles
from canbridge.component import Component, Sink
from canbridge.schema import Choice, Number, Option, OptionError
from canbridge.signals import (
    ALARM_REPORT,
    CONDITION_NAMES,
    REPORT_NONE,
    TimedValues,
    Update,
    Value,
    names_where,
)

CVL, CCL = "charge_voltage_limit", "charge_current_limit"
DCL, DVL = "discharge_current_limit", "discharge_voltage_limit"

NEEDED = (CVL, CCL, DCL, DVL, "soc", "voltage", "current", "temperature")
"""The signals that must all be fresh for the inverter to get live values."""

NUMERIC = (*NEEDED, "soh", "soc_reported")
"""Signals used as numbers: anything else in them is unusable."""
NUMERIC_SET = frozenset(NUMERIC)
CHECKED = frozenset((CVL, DVL, CCL, DCL, "voltage"))
"""Signals the plausibility check looks at."""
READS = frozenset((*NUMERIC, ALARM_REPORT)) | CONDITION_NAMES
"""Every signal the stop model looks at (an inverter sink's `reads`): an alarm outside the
vocabulary counts only within an alarm report, which carries `alarm_report`."""

CHARGE_BLOCKERS = ("alarm_high_voltage", "alarm_high_temp_charge", "alarm_low_temp_charge",
                   "alarm_high_charge_current")
DISCHARGE_BLOCKERS = ("alarm_low_voltage", "alarm_high_temp_discharge",
                      "alarm_low_temp_discharge", "alarm_high_discharge_current")
SYSTEM_ERROR_ALARMS = ("alarm_general", "alarm_internal", "alarm_cell_imbalance")

DEFAULT_SOH = 100
"""SOH sent when the battery never reports one: inverters only display it, and an invented
low value could make some derate; 100 % claims nothing beyond "no degradation reported"."""

EPSILON = 1e-6
"""In grid steps: keeps float noise such as 55.9 / 0.1 = 558.9999999 from costing a step."""


def floor_to(value: float, step: float) -> float:
    """`value` rounded down to a multiple of `step` (a field's resolution)."""
    return _on_grid(math.floor(value / step + EPSILON), step)


def ceil_to(value: float, step: float) -> float:
    """`value` rounded up to a multiple of `step`."""
    return _on_grid(math.ceil(value / step - EPSILON), step)


@functools.cache
def _digits(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + EPSILON)) if step < 1 else 0


def _on_grid(steps: int, step: float) -> float:
    return round(steps * step, _digits(step))


def finite(value: object) -> bool:
    if type(value) is float:  # nearly every value: the quick answer first
        return math.isfinite(value)
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


INVERTER_OPTIONS = (
    Option("inverter", Choice(profiles.names()), profiles.GENERIC,
           "inverter profile: sets the defaults below for a real inverter (see the Inverters "
           "table); an option written in the pipeline wins"),
    Option("stale_after_secs", Number(min=2.0, max=60.0), 5.0,
           "battery data or alarm report older than this is stale"),
    Option("on_stale", Choice(("safe", "silent")), "safe",
           "stale data: \"safe\" sends stop frames (no charge, no discharge), "
           "\"silent\" sends nothing"),
    Option("stop_current", Number(min=0.0, max=1.0), 0.0,
           "current limit sent for a disabled direction instead of 0 A, for inverters that "
           "ignore 0 A (Sofar: 0.1); 0 sends 0 A"),
    Option("stop_charge_by", Choice(("current", "voltage")), "current",
           "how a disabled charge is said: \"current\" is CCL 0 A; \"voltage\" also lowers CVL "
           "to the pack voltage (Deye, Victron)"),
    Option("max_charge_voltage", Number(min=0.0, min_exclusive=True, max=6553.5), None,
           "cap on the charge voltage limit (V); only ever lowers the battery's value"),
    Option("max_charge_current", Number(min=0.0, max=3276.7), None,
           "cap on the charge current limit (A); only ever lowers the battery's value"),
    Option("max_discharge_current", Number(min=0.0, max=3276.7), None,
           "cap on the discharge current limit (A); only ever lowers the battery's value"),
    Option("current_share", Number(min=0.0, min_exclusive=True, max=1.0), 1.0,
           "this inverter's share of the battery's current limits (two inverters on one "
           "bank: 0.5 each); scales CCL and DCL, never the stop"),
    Option("plausible_voltage_min", Number(min=1.0, max=1000.0), 40.0,
           "lowest plausible CVL, DVL and pack voltage (V); anything outside is not data"),
    Option("plausible_voltage_max", Number(min=1.0, max=1000.0), 65.0,
           "highest plausible CVL, DVL and pack voltage (V); anything outside is not data"),
)
"""Options every inverter sink has; a profile may preset any option of the sink."""


def profile_presets(table: Mapping[str, Any], schema: Iterable[Option]) -> dict[str, Any]:
    """The values the table's inverter profile sets for the options `schema` has."""
    name = table.get("inverter", profiles.GENERIC)
    if not isinstance(name, str) or name not in profiles.names():
        return {}  # the schema reports the unknown name, with "did you mean"
    known = {option.name for option in schema}
    return {key: value for key, value in profiles.load(name).options.items() if key in known}


class InverterSink(Sink):
    """A sink that tells an inverter what to do: its defaults come from the inverter profile
    the pipeline names, and its options are checked together (a StopModel decides)."""

    current_step: ClassVar[float] = 0.1
    """The resolution of the current limits the protocol sends, in A."""
    reads = READS

    @classmethod
    def presets(cls, table: Mapping[str, Any]) -> Mapping[str, Any]:
        return profile_presets(table, cls.options)

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[tuple[str, str] | OptionError]:
        return check_inverter_options(config, cls.current_step)


def check_inverter_options(config: Mapping[str, Any], current_step: float
                           ) -> Iterable[tuple[str, str] | OptionError]:
    """Checks across INVERTER_OPTIONS, and the sink's `period_secs` where it has one."""
    if "period_secs" in config and config["stale_after_secs"] < config["period_secs"]:
        yield "stale_after_secs", "must be at least period_secs"
    stop = config["stop_current"]
    if 0 < stop < current_step:
        yield "stop_current", (f"{stop:g} A is sent as 0 A (resolution {current_step:g} A); "
                               f"use 0 or >= {current_step:g}")
    low, high = config["plausible_voltage_min"], config["plausible_voltage_max"]
    if low >= high:
        yield "plausible_voltage_max", "must be above plausible_voltage_min"
    cap = config["max_charge_voltage"]
    if cap is not None and cap < low:
        yield "max_charge_voltage", (f"{cap:g} V is below plausible_voltage_min ({low:g} V): "
                                     "the battery could never charge")


@dataclass(frozen=True, slots=True)
class Decision:
    """What the inverter gets this period, in physical units on the fields' grids."""

    charge_enable: bool
    discharge_enable: bool
    system_error: bool
    charge_voltage_limit: float
    charge_current_limit: float
    discharge_current_limit: float
    discharge_voltage_limit: float
    soc: Value
    soh: Value
    voltage: float
    current: float
    temperature: float
    active: frozenset[str]
    """The alarm_* and warning_* conditions the latest report marks active."""


class StopModel:
    """Freshness, plausibility and the stop rules for one inverter sink.

    `sending` says what the sink does once the data is complete, for the operator log;
    `voltage_step` and `current_step` are the resolution of the sink's limit fields, so a
    limit is 0 exactly when it is sent as 0.
    """

    def __init__(self, owner: Component, *, sending: str, voltage_step: float = 0.1,
                 current_step: float = 0.1):
        cfg = owner.config
        self.owner = owner
        self.sending = sending
        self.log = owner.log
        self.limited = owner.context.limited
        self.profile = cfg["inverter"]
        self.stale_after = cfg["stale_after_secs"]
        self.silent_when_stale = cfg["on_stale"] == "silent"
        self.stop_current = cfg["stop_current"]
        self.stop_by_voltage = cfg["stop_charge_by"] == "voltage"
        self.caps = (cfg["max_charge_voltage"], cfg["max_charge_current"],
                     cfg["max_discharge_current"])
        self.share = cfg["current_share"]
        self.plausible = (cfg["plausible_voltage_min"], cfg["plausible_voltage_max"])
        self.voltage_step = voltage_step
        self.current_step = current_step
        self.latest = TimedValues()
        self.state = "waiting"
        self.safety = "waiting for battery data"
        self.implausible = 0
        self.last: Decision | None = None
        """What the inverter was last told."""
        self._last_implausible: str | None = None
        self._disabled: dict[str, tuple[str, ...]] = {"charge": (), "discharge": ()}

    # -- input ----------------------------------------------------------------------------

    def accept(self, update: Update) -> None:
        """Take an update, less whatever is unusable (not a number, implausible)."""
        values = update.values
        numeric = names_where(NUMERIC_SET.__contains__, tuple(values))
        bad = [name for name in numeric if not finite(values[name])]
        if bad:
            # Unusable, so not fresh: the signal ages into the safe state instead of making
            # the encoder fail and the inverter hear nothing at all.
            self.owner.errors += 1
            self.limited.warning(
                ("not a number", *bad), "%s: ignored %s: not a finite number", self.owner.name,
                ", ".join(f"{name} = {values[name]!r}" for name in bad))
            values = {k: v for k, v in values.items() if k not in bad}
            update = Update(update.timestamp, values)
        problem = self._implausible(values)
        if problem:
            self.implausible += 1
            self._last_implausible = problem
            self.limited.warning(("implausible",), "battery values ignored as implausible: %s",
                                 problem)
            return
        self.latest.apply(update)

    def _implausible(self, values: Mapping[str, Value]) -> str:
        if values.keys().isdisjoint(CHECKED):
            return ""
        low, high = self.plausible
        problems = [f"{name} = {values[name]:g} V is outside {low:g}..{high:g} V"
                    for name in (CVL, DVL, "voltage")
                    if name in values and not low <= values[name] <= high]  # type: ignore[operator]
        problems += [f"{name} = {values[name]:g} A is negative" for name in (CCL, DCL)
                     if name in values and values[name] < 0]  # type: ignore[operator]
        if not problems and (CVL in values or DVL in values):
            cvl = values.get(CVL, self.latest.get(CVL))
            dvl = values.get(DVL, self.latest.get(DVL))
            if cvl is not None and dvl is not None and dvl >= cvl:  # type: ignore[operator]
                problems.append(f"{DVL} = {dvl:g} V is not below {CVL} = {cvl:g} V")
        return "; ".join(problems)

    def complete(self, now: float) -> bool:
        """Every signal the inverter needs is there and fresh."""
        return self.latest.fresh(NEEDED, now, self.stale_after)

    # -- the decision ---------------------------------------------------------------------

    def decide(self, now: float) -> Decision | None:
        """What to send now, or None to send nothing (no data yet, or silent when stale)."""
        fresh = self.complete(now)
        if not self._follow_state(fresh, now):
            return None
        latest = self.latest
        get = latest.get
        report = self._report_problem(now)
        active = latest.active_conditions()
        system_alarms = tuple(name for name in SYSTEM_ERROR_ALARMS if name in active)
        system_error = not fresh or bool(report) or bool(system_alarms)

        volt, amp = self.voltage_step, self.current_step
        cap_cvl, cap_ccl, cap_dcl = self.caps
        battery_cvl = floor_to(get(CVL), volt)  # type: ignore[arg-type]
        dvl = ceil_to(get(DVL), volt)  # type: ignore[arg-type]
        cvl = min(max(floor_to(_capped(get(CVL), cap_cvl), volt), dvl), battery_cvl)
        share = self.share
        ccl = floor_to(_capped(get(CCL) * share, cap_ccl), amp)  # type: ignore[operator]
        dcl = floor_to(_capped(get(DCL) * share, cap_dcl), amp)  # type: ignore[operator]

        common = (("battery data stale",) if not fresh else
                  (report,) if report else system_alarms)
        charge_why = (*common, *(n for n in CHARGE_BLOCKERS if n in active),
                      *((f"{CCL} 0",) if ccl <= 0 and fresh else ()))
        discharge_why = (*common, *(n for n in DISCHARGE_BLOCKERS if n in active),
                         *((f"{DCL} 0",) if dcl <= 0 and fresh else ()))
        if charge_why:
            ccl = self.stop_current
            if self.stop_by_voltage:
                # Only ever lower than the CVL charging gets: a pack above the owner's cap
                # must not lift the CVL over it.
                pack = floor_to(get("voltage"), volt)  # type: ignore[arg-type]
                cvl = min(max(pack, dvl), cvl)
        if discharge_why:
            dcl = self.stop_current
        self._explain(fresh, charge_why, discharge_why)
        self.last = Decision(
            charge_enable=not charge_why, discharge_enable=not discharge_why,
            system_error=system_error,
            charge_voltage_limit=cvl, charge_current_limit=ccl,
            discharge_current_limit=dcl, discharge_voltage_limit=dvl,
            soc=self._soc(), soh=get("soh", DEFAULT_SOH),  # type: ignore[arg-type]
            voltage=get("voltage"), current=get("current") if fresh else 0.0,  # type: ignore[arg-type]
            temperature=get("temperature"),  # type: ignore[arg-type]
            active=active)
        return self.last

    def _report_problem(self, now: float) -> str:
        """Why the alarm status is not known now, or "" when it is."""
        at = self.latest.updated_at(ALARM_REPORT)
        if at is None:
            return "no alarm report yet"
        if now - at > self.stale_after:
            return f"no alarm report for {now - at:.1f} s"
        return ""

    def _soc(self) -> Value:
        """soc_reported (a balancing hold) when it is at least as recent as soc."""
        latest = self.latest
        reported_at = latest.updated_at("soc_reported")
        if reported_at is not None and reported_at >= (latest.updated_at("soc") or 0.0):
            return latest["soc_reported"]
        return latest["soc"]

    def _explain(self, fresh: bool, charge: tuple[str, ...], discharge: tuple[str, ...]) -> None:
        """Keep `safety` current and log each direction turning off or on again (while the
        data is stale the state change has said it already)."""
        if fresh:
            self.safety = "; ".join(f"{what} disabled ({', '.join(why)})" for what, why in
                                    (("charge", charge), ("discharge", discharge)) if why
                                    ) or "normal"
        for what, why in (("charge", charge), ("discharge", discharge)):
            # Ages change every period; only a change of cause is news to the operator.
            causes = tuple(reason.split(" for ")[0] for reason in why)
            before = self._disabled[what]
            if causes == before:
                continue
            self._disabled[what] = causes
            if not fresh or before == ("battery data stale",):
                continue
            if why:
                # A full battery's CCL 0, or the first second before any alarm report, is
                # ordinary; an alarm or a silent alarm channel is worth a warning.
                alarming = any(c.startswith("alarm_") or c == "no alarm report" for c in causes)
                self.limited.log(logging.WARNING if alarming else logging.INFO,
                                 ("disabled", what, causes), "%s disabled: %s", what,
                                 ", ".join(why))
            else:
                self.limited.log(logging.INFO, ("enabled", what), "%s enabled again", what)

    # -- the state machine ----------------------------------------------------------------

    def _follow_state(self, fresh: bool, now: float) -> bool:
        """Move between waiting / ok / safe / silent; True when frames should go out."""
        if fresh:
            if self.state == "waiting":
                self.log.info("battery data complete: %s (inverter profile %s)",
                              self.sending, self.profile)
            elif self.state != "ok":
                self.log.info("battery data fresh again: %s state ended", self.state)
            self.state = "ok"
            self._last_implausible = None
            return True
        if self.state == "waiting":
            return False
        if self.state == "ok":
            self.state = "silent" if self.silent_when_stale else "safe"
            action = ("transmitting stopped" if self.silent_when_stale
                      else "safe state: CCL = DCL = 0, charge and discharge disabled")
            detail = self._stale_detail(now)
            self.safety = f"{self.state}: battery data stale ({detail})"
            self.log.warning("battery data stale (%s): %s", detail, action)
        return self.state == "safe"

    def _stale_detail(self, now: float) -> str:
        """Which needed signals are stale, compactly: usually all of them, equally old."""
        latest = self.latest
        ages = {name: None if ts is None else now - ts
                for name in NEEDED if (ts := latest.updated_at(name)) is None
                or now - ts > self.stale_after}
        if len(ages) == len(NEEDED) and None not in ages.values():
            detail = f"no battery update for {min(ages.values()):.1f} s"  # type: ignore[type-var]
        else:
            detail = ", ".join(f"{name} never seen" if age is None else f"{name} {age:.1f} s old"
                               for name, age in ages.items())
        if self._last_implausible:
            detail += f"; last implausible values: {self._last_implausible}"
        return detail

    # -- health ---------------------------------------------------------------------------

    def oldest_update(self) -> float | None:
        times = [self.latest.updated_at(name) for name in NEEDED]
        return None if None in times else min(times)  # type: ignore[type-var]

    def status(self, now: float) -> dict[str, Any]:
        report_at = self.latest.updated_at(ALARM_REPORT)
        return {
            "state": self.state,
            "profile": self.profile,
            "safety": self.safety,
            "implausible": self.implausible,
            "alarm_report_age": None if report_at is None else round(now - report_at, 3),
            "alarms_supported": self.latest.get(ALARM_REPORT) != REPORT_NONE,
            "sent": None if self.last is None or self.state == "silent" else {
                CVL: self.last.charge_voltage_limit, CCL: self.last.charge_current_limit,
                DCL: self.last.discharge_current_limit, DVL: self.last.discharge_voltage_limit,
                "charge_enable": self.last.charge_enable,
                "discharge_enable": self.last.discharge_enable},
        }


def _capped(value: Value | None, cap: float | None) -> float:
    return value if cap is None else min(value, cap)  # type: ignore[return-value,type-var]
