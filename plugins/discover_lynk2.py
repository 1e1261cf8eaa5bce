"""Source `discover-lynk2`: a Discover AES LYNK II gateway (Discover Serial CAN profile).

Every frame layout comes from dbc/discover_lynk2.dbc; this module adds what a DBC cannot
say: the 2-bit alarm semantics of 0x35A, text frames, the firmware version order and the
model name split over two frames. One decoded frame gives one update, never a partial one.

Decisions where the protocol leaves room:
- Scaled values are rounded to the decimals of their DBC scale (55.9 V, not 55.900000000000006).
- A frame is skipped whole, counted and logged (once a minute per ID) when it has the wrong
  length, is remote, error or CAN FD, has a 29-bit ID equal to one of the profile's IDs, or
  holds a value outside its DBC range (the core's FrameSource and codec do this). Any other
  ID (0x204, the inverter's 0x300 and 0x305, also as 29-bit IDs) is only counted: it is not
  ours.
- `model` is emitted once both halves (0x370, 0x371) have arrived: the latest of each joined,
  NULs removed, on each half's frame. All NUL (firmware 2.1) means no `model` at all.
- `protocol_version` is text ("1"), like every identification signal of the vocabulary, so
  sinks can treat manufacturer/model/firmware/protocol alike.
- An all-zero 0x372 or 0x373 counts as "not reported", like an all-NUL text frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from canbridge import (
    ALARM_REPORT,
    REPORT_RECEIVED,
    BusRef,
    Context,
    FrameSource,
    Option,
    OptionError,
    Value,
    as_is,
    hookimpl,
)
from canbridge.databases import builtin_dbc, load_dbc

DBC_NAME = "discover_lynk2"
BITRATE = 250_000
ACTIVE, NORMAL = 1, 2
REPORTED = frozenset((ACTIVE, NORMAL))
TEXT_BYTES = 8
MODEL_HALVES = ("ModelFirstHalf", "ModelSecondHalf")
"""`model` joins these two frames: one repeating its bytes may still give a new model."""

Values = dict[str, Value]


def _text(raw: int) -> str | None:
    """A NUL-padded ASCII text signal as a string; None when it is empty (all NUL)."""
    return _bytes_text(raw.to_bytes(TEXT_BYTES, "little"))


def _bytes_text(data: bytes) -> str | None:
    text = data.replace(b"\0", b"").decode("ascii", "replace").strip()
    return text or None


class DiscoverLynk2(FrameSource):
    """Decodes the LYNK II frames on `bus` into the battery vocabulary."""

    type_name = "discover-lynk2"
    summary = "reads a Discover AES LYNK II gateway (Discover Serial CAN, 250 kbit/s)"
    options = (
        Option("bus", BusRef(non_empty=True), help="the [buses] table the LYNK II is on"),
    )

    @classmethod
    def frame_ids(cls, config: Mapping[str, Any]) -> tuple[frozenset[int], frozenset[int]]:
        return frozenset(m.frame_id for m in load_dbc(builtin_dbc(DBC_NAME)).messages), frozenset()

    @classmethod
    def check_bus(cls, config: Mapping[str, Any], option: str, bus: Mapping[str, Any]
                  ) -> Iterable[OptionError]:
        return cls.bitrate_warnings(option, config[option], bus, BITRATE,
                                    "the LYNK II's Discover Serial CAN profile talks")

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        self._model_halves: list[bytes | None] = [None, None]
        converters: dict[str, Callable[[dict[str, Any]], Values | None]] = {
            "AlarmsWarnings": self._alarms,
            "Manufacturer": self._manufacturer,
            "ModelFirstHalf": self._model_first,
            "ModelSecondHalf": self._model_second,
            "FirmwareVersion": self._firmware,
            "ProtocolVersion": self._protocol,
        }
        db = load_dbc(builtin_dbc(DBC_NAME))
        # Limits, capacity, SOC/SOH and measurements carry vocabulary names as they are.
        for message in db.messages:
            self.add_message(message, converters.get(message.name, as_is),
                             repeats=message.name not in MODEL_HALVES)
        self._alarm_names = frozenset(
            s.name for s in db.get_message_by_name("AlarmsWarnings").signals
            if s.name.startswith(("alarm_", "warning_")))

    # -- what a DBC cannot say ----------------------------------------------------------

    def _alarms(self, values: dict[str, Any]) -> Values:
        """One alarm report: 1 = active, 2 = normal; 0 and 3 = not supported, so the signal
        is absent, and the report replacing the previous one whole clears it."""
        report: Values = {name: raw == ACTIVE for name, raw in values.items()
                          if raw in REPORTED and name in self._alarm_names}
        report[ALARM_REPORT] = REPORT_RECEIVED
        return report

    @staticmethod
    def _manufacturer(values: dict[str, Any]) -> Values | None:
        text = _text(values["manufacturer"])
        return None if text is None else {"manufacturer": text}

    def _model_first(self, values: dict[str, Any]) -> Values | None:
        return self._model(0, values["model_first_half"])

    def _model_second(self, values: dict[str, Any]) -> Values | None:
        return self._model(1, values["model_second_half"])

    def _model(self, half: int, raw: int) -> Values | None:
        """`model` once both halves have arrived: the latest of each, joined, NULs removed.

        Waiting for both avoids announcing a truncated name ("Discover", then "Discover AES").
        """
        halves = self._model_halves
        halves[half] = raw.to_bytes(TEXT_BYTES, "little")
        if halves[0] is None or halves[1] is None:
            return None
        text = _bytes_text(halves[0] + halves[1])
        return None if text is None else {"model": text}

    @staticmethod
    def _firmware(values: dict[str, Any]) -> Values | None:
        """Most significant byte last: 00 00 01 02 is "2.1.0.0"; all zero means not reported."""
        parts = (values["firmware_major"], values["firmware_minor"],
                 values["firmware_patch"], values["firmware_build"])
        if not any(parts):
            return None
        return {"firmware_version": ".".join(map(str, parts))}

    @staticmethod
    def _protocol(values: dict[str, Any]) -> Values | None:
        """Text, as the vocabulary says of every identification signal; 0 means not reported."""
        version = values["protocol_version"]
        return {"protocol_version": str(version)} if version else None

@hookimpl
def canbridge_component_types() -> list[type]:
    return [DiscoverLynk2]


@hookimpl
def canbridge_dbc_files() -> list[Path]:
    return [builtin_dbc(DBC_NAME)]
