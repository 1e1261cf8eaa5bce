"""What the battery answers in each Pylontech RS485 response's INFO, from the stop model's
decision. Big-endian fields, as the protocol writes them.

Layouts: Pylontech "RS485 protocol pylon low voltage V3.3" (2018-08-21), read with
Frankkkkk/python-pylontech (its decoder, and real frames of US2000/US3000 batteries in its
README and tests) and the battery-side emulators of ai-republic/bms-to-inverter
(PylonInverterRS485Processor). Where those disagree the choice that fails safe is made:
currents in 0.1 A (an inverter reading 0.01 A units then sees less, never more), the
discharge current limit negative as real Pylontech batteries report it (python-pylontech's
README shows DischargeCurrentLimit -10.0 from a US2000). Temperatures are 0.1 K
(0.1 degC + 273.1). The LYNK II reports no cell voltages: the cells are the pack voltage
divided by `cells`, said as such in the README.
"""

from __future__ import annotations

import math
import struct

from canbridge.safety import Decision

KELVIN_TENTHS = 2731
SOFTWARE_VERSION = b"\x01\x00"
U16_MAX, U24_MAX = 0xFFFF, 0xFFFFFF

# 0x92 status byte: the same flags as the CAN 0x35C byte 0.
CHARGE_ENABLE, DISCHARGE_ENABLE = 0x80, 0x40


def _kelvin(celsius: float) -> int:
    return max(0, min(U16_MAX, round(celsius * 10) + KELVIN_TENTHS))


def _amps(amps: float) -> int:
    return max(-32768, min(32767, round(amps * 10)))


def _millivolts(volts: float) -> int:
    return max(0, min(U16_MAX, round(volts * 1000)))


def _text(text: str, size: int) -> bytes:
    return text.encode("ascii", "replace")[:size].ljust(size, b" ")


def manufacturer(name: str) -> bytes:
    """0x51: device name (10), software version (2), manufacturer name (20)."""
    return _text(name, 10) + SOFTWARE_VERSION + _text(name, 20)


def analog(d: Decision, address: int, cells: int, capacity_ah: float) -> bytes:
    """0x42: INFOFLAG, the pack's address, cell voltages, temperatures, current, voltage,
    remaining and total capacity (mAh; 3-byte fields when more than 65.535 Ah, held at
    16777.215 Ah), cycles."""
    cell_mv = _millivolts(d.voltage / cells)
    total_mah = round(capacity_ah * 1000)
    remaining_mah = round(total_mah * float(d.soc) / 100)  # the SOC the inverter is told
    out = bytearray([0x00, address, cells])
    out += struct.pack(f">{cells}H", *([cell_mv] * cells))
    out += bytes([1]) + struct.pack(">H", _kelvin(d.temperature))
    out += struct.pack(">hH", _amps(d.current), _millivolts(d.voltage))
    if total_mah <= U16_MAX:
        out += struct.pack(">HBHH", remaining_mah, 2, total_mah, 0)
    else:  # user-defined item count 4: the capacities again, in three bytes each
        out += struct.pack(">HBHH", U16_MAX, 4, U16_MAX, 0)
        out += b"".join(min(mah, U24_MAX).to_bytes(3, "big") for mah in (remaining_mah,
                                                                          total_mah))
    return bytes(out)


def alarms(d: Decision, address: int, cells: int) -> bytes:
    """0x44: INFOFLAG, address, cell states, temperature state, charge current, pack voltage
    and discharge current states (0 normal, 1 below the lower limit, 2 above the upper one),
    then five status bytes (left 0: their bit layout is not confirmed by a second source)."""
    active = d.active
    low_temp = not active.isdisjoint(("alarm_low_temp_charge", "alarm_low_temp_discharge"))
    high_temp = not active.isdisjoint(("alarm_high_temp_charge", "alarm_high_temp_discharge"))
    voltage = 2 if "alarm_high_voltage" in active else 1 if "alarm_low_voltage" in active else 0
    out = bytearray([0x00, address, cells, *([0] * cells), 1, 2 if high_temp else
                     1 if low_temp else 0])
    out += bytes([2 if "alarm_high_charge_current" in active else 0, voltage,
                  2 if "alarm_high_discharge_current" in active else 0, 0, 0, 0, 0, 0])
    return bytes(out)


def parameters(d: Decision, cells: int, charge_temps: tuple[float, float],
               discharge_temps: tuple[float, float]) -> bytes:
    """0x47: INFOFLAG, cell high / low / under voltage (mV), charge high / low temperature,
    charge current limit, module high / low / under voltage, discharge high / low
    temperature, discharge current limit (negative)."""
    cvl, dvl = d.charge_voltage_limit, d.discharge_voltage_limit
    cell_high = math.floor(cvl * 1000 / cells)  # a limit: never rounded past the pack's
    cell_low = math.ceil(dvl * 1000 / cells)
    return bytes([0x00]) + struct.pack(
        ">HHHHHhHHHHHh",
        cell_high, cell_low, cell_low,
        _kelvin(charge_temps[1]), _kelvin(charge_temps[0]), _amps(d.charge_current_limit),
        _millivolts(cvl), _millivolts(dvl), _millivolts(dvl),
        _kelvin(discharge_temps[1]), _kelvin(discharge_temps[0]),
        -_amps(d.discharge_current_limit))


def management(d: Decision, address: int) -> bytes:
    """0x92: address, CVL and DVL (mV), CCL and DCL (0.1 A, DCL negative), and the status
    byte: b7 charge enable, b6 discharge enable (force-charge and full-charge bits never)."""
    status = (CHARGE_ENABLE if d.charge_enable else 0) | (
        DISCHARGE_ENABLE if d.discharge_enable else 0)
    return bytes([address]) + struct.pack(
        ">HHhhB", _millivolts(d.charge_voltage_limit), _millivolts(d.discharge_voltage_limit),
        _amps(d.charge_current_limit), -_amps(d.discharge_current_limit), status)
