"""The JSON object the earlier Discover-to-Pylontech program published (topic "DiscoverStorage"),
rebuilt from vocabulary signals so existing dashboards keep working.

Kept as that program had them: SOC, SOH, capacities and the balancing time as integers,
firmware and protocol versions as text, `cellBalancingRemainingTime` in seconds. Temperatures
are rounded to 0.1 (°C and °F). A key whose signal has not arrived is left out, except the
three balancing keys: without a balancing hold the inverter gets the battery's own SOC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from canbridge import Value

Convert = Callable[[Value], Any]


def _integer(value: Value) -> int:
    return round(float(value))


def _number(value: Value) -> float:
    return round(float(value), 3)


def _tenth(value: Value) -> float:
    return round(float(value), 1)


def _fahrenheit(value: Value) -> float:
    return round(float(value) * 9 / 5 + 32, 1)


LEGACY_KEYS: tuple[tuple[str, str, Convert], ...] = (
    ("stateOfCharge", "soc", _integer),
    ("stateOfHealth", "soh", _integer),
    ("batteryVoltage", "voltage", _number),
    ("batteryCurrent", "current", _number),
    ("batteryTemperature", "temperature", _tenth),
    ("batteryTemperatureF", "temperature", _fahrenheit),
    ("requestedChargeVoltage", "charge_voltage_limit", _number),
    ("requestedChargeCurrent", "charge_current_limit", _number),
    ("requestedMaximumDischargeCurrent", "discharge_current_limit", _number),
    ("lowBatteryCutOutVoltage", "discharge_voltage_limit", _number),
    ("batteryNominalCapacity", "capacity_nominal", _integer),
    ("batteryRemainingCapacity", "capacity_remaining", _integer),
    ("manufacturer", "manufacturer", str),
    ("lynxFirmwareVersion", "firmware_version", str),
    ("protocolVersion", "protocol_version", str),
)


def legacy_payload(values: Mapping[str, Value]) -> dict[str, Any]:
    """The legacy object for the latest `values` (vocabulary names)."""
    out: dict[str, Any] = {key: convert(values[signal])
                           for key, signal, convert in LEGACY_KEYS if signal in values}
    soc = values.get("soc_reported", values.get("soc"))
    if soc is not None:
        out["inverterFakeoutSOC"] = _integer(soc)
    out["isCellBalancingActive"] = bool(values.get("balancing_active", False))
    out["cellBalancingRemainingTime"] = _integer(values.get("balancing_remaining", 0))
    return out
