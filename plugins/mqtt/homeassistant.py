"""Home Assistant MQTT discovery: what each vocabulary signal is, and its config message.

One table says, per signal of protocols/signals.md, its label, unit and the device class and
state class Home Assistant defines for it. A signal outside the table (a third-party plugin's)
is announced from its value's type: a flag as a binary sensor, anything else as a plain sensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from canbridge import Value, __version__
from canbridge.controls import NUMBER, PRESS, SWITCH, Control

MEASUREMENT = "measurement"


@dataclass(frozen=True)
class SignalInfo:
    label: str
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = None
    binary: bool = False
    diagnostic: bool = False


def _measured(label: str, unit: str, device_class: str | None = None) -> SignalInfo:
    return SignalInfo(label, unit, device_class, MEASUREMENT)


def _identity(label: str) -> SignalInfo:
    return SignalInfo(label, diagnostic=True)


CONDITIONS = {
    "general": "general",
    "high_voltage": "high voltage",
    "low_voltage": "low voltage",
    "high_temp_discharge": "high temperature (discharge)",
    "low_temp_discharge": "low temperature (discharge)",
    "high_temp_charge": "high temperature (charge)",
    "low_temp_charge": "low temperature (charge)",
    "high_discharge_current": "high discharge current",
    "high_charge_current": "high charge current",
    "internal": "internal",
    "cell_imbalance": "cell imbalance",
}

SIGNALS: dict[str, SignalInfo] = {
    "charge_voltage_limit": _measured("Charge voltage limit", "V", "voltage"),
    "charge_current_limit": _measured("Charge current limit", "A", "current"),
    "discharge_current_limit": _measured("Discharge current limit", "A", "current"),
    "discharge_voltage_limit": _measured("Discharge voltage limit", "V", "voltage"),
    "soc": _measured("State of charge", "%", "battery"),
    "soh": _measured("State of health", "%"),
    "capacity_nominal": _measured("Nominal capacity", "Ah"),
    "capacity_remaining": _measured("Remaining capacity", "Ah"),
    "voltage": _measured("Voltage", "V", "voltage"),
    "current": _measured("Current", "A", "current"),
    "temperature": _measured("Temperature", "°C", "temperature"),
    "manufacturer": _identity("Manufacturer"),
    "model": _identity("Model"),
    "firmware_version": _identity("Firmware version"),
    "protocol_version": _identity("Protocol version"),
    "alarm_report": _identity("Alarm report"),
    "soc_reported": _measured("State of charge reported", "%", "battery"),
    "balancing_active": SignalInfo("Cell balancing", device_class="running", binary=True),
    "balancing_remaining": _measured("Cell balancing remaining", "s", "duration"),
    "balancing_last": SignalInfo("Last cell balancing", device_class="timestamp"),
    "balancing_next_due": SignalInfo("Next cell balancing", device_class="timestamp"),
    **{f"alarm_{key}": SignalInfo(f"Alarm {label}", device_class="problem", binary=True)
       for key, label in CONDITIONS.items()},
    **{f"warning_{key}": SignalInfo(f"Warning {label}", device_class="problem", binary=True)
       for key, label in CONDITIONS.items()},
}


def signal_info(name: str, value: Value) -> SignalInfo:
    """The table's entry, or one guessed from the value for a signal the table lacks."""
    known = SIGNALS.get(name)
    if known is not None:
        return known
    label = name.replace("_", " ").capitalize()
    if isinstance(value, bool):
        return SignalInfo(label, binary=True)
    if isinstance(value, int | float):
        return SignalInfo(label, state_class=MEASUREMENT)
    return SignalInfo(label)


def device_block(node_id: str, manufacturer: Value | None, model: Value | None) -> dict[str, Any]:
    """The one device every entity of this node belongs to; identity from the battery itself."""
    device: dict[str, Any] = {"identifiers": [f"canbridge_{node_id}"], "name": node_id,
                              "sw_version": __version__}
    if manufacturer:
        device["manufacturer"] = str(manufacturer)
    if model:
        device["model"] = str(model)
    return device


ORIGIN = {"name": "canbridge", "sw_version": __version__}


def discovery_config(name: str, value: Value, *, node_id: str, discovery_prefix: str,
                     state_topic: str, availability_topic: str,
                     device: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The retained config topic and payload announcing signal `name` to Home Assistant."""
    info = signal_info(name, value)
    component = "binary_sensor" if info.binary else "sensor"
    config: dict[str, Any] = {
        "unique_id": f"canbridge_{node_id}_{name}",
        "name": info.label,
        "state_topic": state_topic,
        "availability_topic": availability_topic,
        "device": device,
        "origin": ORIGIN,
    }
    if info.binary:
        config["value_template"] = f"{{{{ 'ON' if value_json.{name} else 'OFF' }}}}"
        config["payload_on"] = "ON"
        config["payload_off"] = "OFF"
    else:
        config["value_template"] = f"{{{{ value_json.{name} }}}}"
    if info.unit is not None:
        config["unit_of_measurement"] = info.unit
    if info.device_class is not None:
        config["device_class"] = info.device_class
    if info.state_class is not None:
        config["state_class"] = info.state_class
    if info.diagnostic:
        config["entity_category"] = "diagnostic"
    return f"{discovery_prefix}/{component}/{node_id}/{name}/config", config


def control_config(control: Control, *, node_id: str, base: str, discovery_prefix: str,
                   availability_topic: str, device: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The retained config announcing a control as a number, switch or button entity."""
    config: dict[str, Any] = {
        "unique_id": f"canbridge_{node_id}_control_{control.name}",
        "name": control.help[0].upper() + control.help[1:],
        "command_topic": f"{base}/set/{control.name}",
        "availability_topic": availability_topic,
        "device": device,
        "origin": ORIGIN,
        "entity_category": "config",
    }
    if control.kind == NUMBER:
        config.update(state_topic=f"{base}/control/{control.name}", min=control.minimum,
                      max=control.maximum, step=0.1 if control.unit == "A" else 1,
                      mode="box", unit_of_measurement=control.unit)
    elif control.kind == SWITCH:
        config.update(state_topic=f"{base}/control/{control.name}", payload_on="ON",
                      payload_off="OFF", state_on="ON", state_off="OFF")
    else:
        config["payload_press"] = PRESS
    return f"{discovery_prefix}/{control.kind}/{node_id}/{control.name}/config", config
