"""`dbc-source`: an imaginary battery described by a DBC file only, replayed into a
Pylontech sink, and the checks `validate` makes of such a table."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import can
import pytest
from canbridge_plugins.dbc_source import DbcSource
from conftest import run_canbridge, write_capture
from test_pylontech import NORMAL_BURST

from canbridge import Clock, Update
from canbridge.testing import build, capture

DATA = Path(__file__).resolve().parent / "data"
T0 = 1_760_000_000.0
SIGNALS = """[sources.bms.signals]
pack_voltage = "voltage"
pack_current = "current"
over_voltage = "alarm_high_voltage"
under_voltage = "alarm_low_voltage"
cell_imbalance_warning = "warning_cell_imbalance"
"""


def pipeline(folder: Path, capture: Path, extra: str = "", signals: str = SIGNALS,
             dbc: str = "imaginary_battery.dbc") -> Path:
    if (DATA / dbc).exists():
        (folder / dbc).write_bytes((DATA / dbc).read_bytes())
    path = folder / "pipeline.toml"
    path.write_text(f"""
[buses.battery]
interface = "replay"
path = "{capture}"
speed = "max"

[buses.inverter]
interface = "virtual"
channel = "dbc-{uuid.uuid4()}"
record = "inverter.log"

[sources.bms]
type = "dbc-source"
bus = "battery"
dbc = "{dbc}"
{extra}
[sinks.inverter]
type = "pylontech"
inputs = ["bms"]
bus = "inverter"

[status]
file = "status.json"

{signals}""")
    return path


def battery_second(second: int, status: int = 0) -> list[tuple[float, int, bytes]]:
    at = T0 + second
    return [
        (at + 0.001, 0x310, struct.pack("<HHHH", 559, 2820, 2820, 432)),
        (at + 0.002, 0x18FF5011, struct.pack("<Hhh BB", 5350, 4, 280, 72, 100)),
        (at + 0.003, 0x312, bytes([status, 30])),
    ]


def test_an_imaginary_battery_needs_only_a_dbc_and_a_table(tmp_path: Path) -> None:
    frames = [f for second in range(6) for f in battery_second(second, 0b001 if second == 3
                                                               else 0)]
    capture = write_capture(tmp_path / "bms.log", frames)
    path = pipeline(tmp_path, capture)
    checked = run_canbridge("validate", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = run_canbridge("run", str(path))
    assert result.returncode == 0, result.stderr
    bursts: dict[float, dict[int, str]] = {}
    for msg in can.LogReader(str(tmp_path / "inverter.log")):
        bursts.setdefault(round(msg.timestamp - T0, 3), {})[msg.arbitration_id] = (
            msg.data.hex(" ").upper())
    # Complete with the first 29-bit measurements frame (T0 + 0.002), before the first
    # status frame: the first burst enables nothing; later ones carry the previous second.
    assert sorted(bursts) == [round(n + 0.002, 3) for n in range(6)]
    assert bursts[0.002][0x35C] == "00 00"
    assert bursts[1.002] == NORMAL_BURST
    assert bursts[4.002][0x351] == "2F 02 00 00 04 0B B0 01"  # over-voltage of second 3
    assert bursts[4.002][0x35C] == "40 00"
    assert bursts[5.002] == NORMAL_BURST


def test_a_battery_without_alarm_signals_must_say_so(tmp_path: Path) -> None:
    capture = write_capture(tmp_path / "bms.log", battery_second(0))
    no_alarms = SIGNALS.split("over_voltage")[0]
    result = run_canbridge("validate", str(pipeline(tmp_path, capture, signals=no_alarms)))
    assert result.returncode == 2
    assert ("sources.bms.alarms: the DBC carries no alarm_* or warning_* signal: if this "
            "battery reports no alarms, say alarms = \"none\"") in result.stderr
    path = pipeline(tmp_path, capture, extra='alarms = "none"\n', signals=no_alarms)
    assert run_canbridge("validate", str(path)).returncode == 0


@pytest.mark.parametrize(("signals", "message"), [
    ('[sources.bms.signals]\npack_voltage = "volatge"\n',
     "sources.bms.signals.pack_voltage: 'volatge' is not a vocabulary signal (did you mean "
     "\"voltage\"?)"),
    ('[sources.bms.signals]\npack_votlage = "voltage"\n',
     "sources.bms.signals.pack_votlage: no such signal in the DBC (did you mean "
     "\"pack_voltage\"?)"),
])
def test_mapped_names_are_checked(tmp_path: Path, signals: str, message: str) -> None:
    capture = write_capture(tmp_path / "bms.log", battery_second(0))
    result = run_canbridge("validate", str(pipeline(tmp_path, capture, signals=signals)))
    assert result.returncode == 2
    assert message in result.stderr


def test_a_dbc_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    capture = write_capture(tmp_path / "bms.log", battery_second(0))
    (tmp_path / "broken.dbc").write_text('VERSION ""\n\nBU_: X\n\nBO_ 1 M: 8 X\n'
                                         ' SG_ b 8|8@1+ (1,0) [0|255] "" X\n')
    result = run_canbridge("validate", str(pipeline(tmp_path, capture, dbc="broken.dbc")))
    assert result.returncode == 2
    assert f"sources.bms.dbc: {tmp_path / 'broken.dbc'}:6: not a valid DBC file" in result.stderr


def test_a_message_longer_than_the_bus_can_carry_is_refused(tmp_path: Path) -> None:
    capture = write_capture(tmp_path / "bms.log", battery_second(0))
    (tmp_path / "fd.dbc").write_text(
        'VERSION ""\n\nBU_: X\n\nBO_ 784 Limits: 12 X\n'
        ' SG_ charge_voltage_limit : 0|16@1+ (0.1,0) [0|6553.5] "V" X\n')
    result = run_canbridge("validate", str(pipeline(tmp_path, capture, dbc="fd.dbc",
                                                    extra='alarms = "none"\n', signals="")))
    assert result.returncode == 2
    assert ("sources.bms.dbc: message Limits has 12 bytes: bus 'battery' is classic CAN (8 at "
            "most)") in result.stderr


def test_dbc_show_takes_a_file_path_and_marks_29_bit_ids() -> None:
    shown = run_canbridge("dbc", "show", str(DATA / "imaginary_battery.dbc"))
    assert shown.returncode == 0, shown.stderr
    assert "0x18FF5011 (29-bit) Measurements  8 bytes" in shown.stdout
    assert "bit 16+16 LE signed   x0.1  pack_current  [-3276.8 .. 3276.7] A" in shown.stdout


def build_source(**options: object) -> tuple[DbcSource, list[Update]]:
    source = build(DbcSource, {"bus": "battery", "dbc": str(DATA / "imaginary_battery.dbc"),
                               "signals": {"pack_voltage": "voltage",
                                           "over_voltage": "alarm_high_voltage"},
                               **options}, clock=Clock(virtual=True, start=T0))
    return source, capture(source)


def test_ids_choose_the_messages_decoded_29_bit_ones_as_the_dbc_writes_them() -> None:
    """And a battery that says it reports no alarms says so with each update of limits."""
    source, out = build_source(ids=[0x310, 0x80000000 | 0x18FF5011], alarms="none")
    for _, frame_id, data in battery_second(0):
        source.on_frame(can.Message(timestamp=T0, arbitration_id=frame_id, data=data,
                                    is_extended_id=frame_id > 0x7FF))
    assert [sorted(u.values) for u in out] == [  # no status frame: it is not among the ids
        ["alarm_report", "charge_current_limit", "charge_voltage_limit",
         "discharge_current_limit", "discharge_voltage_limit"],
        ["soc", "soh", "temperature", "voltage"]]
    assert out[0].values["alarm_report"] == "none"  # alarms = "none" rides on the limits


@pytest.mark.parametrize(("options", "message"), [
    ({"ids": [0x311]}, "ids: 0x311 is not a message of the DBC"),
    ({"ids": [0x18FF5011]}, "ids: 0x18FF5011 is not a message of the DBC"),  # 29-bit: +2^31
    ({"alarms": "none"}, 'alarms: "none", but the DBC maps alarm_high_voltage: use '
                         'alarms = "dbc"'),
    ({"ids": [0x312], "signals": {"fan_speed": "fan"}},
     "signals: no DBC signal maps to a vocabulary name: the source emits nothing"),
])
def test_what_the_source_refuses(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        build_source(**options)
    assert message in str(caught.value)
