"""Source `discover-lynk2`: a Discover AES LYNK II gateway (Discover Serial CAN profile).

Every frame layout comes from dbc/discover_lynk2.dbc; this module adds what a DBC cannot
say: the 2-bit alarm semantics of 0x35A, text frames, the firmware version order and the
model name split over two frames. One decoded frame gives one update, never a partial one.

Decisions where the protocol leaves room:
- Scaled values are rounded to the decimals of their DBC scale (55.9 V, not 55.900000000000006).
- A frame is skipped whole, counted and logged (once a minute per ID) when it has the wrong
  length, is remote, error or CAN FD, has a 29-bit ID equal to one of the profile's IDs, or
  holds a value outside its DBC range. Any other ID (0x204, the inverter's 0x300 and 0x305,
  also as 29-bit IDs) is only counted: it is not ours.
- `model` is emitted once both halves (0x370, 0x371) have arrived: the latest of each joined,
  NULs removed, on each half's frame. All NUL (firmware 2.1) means no `model` at all.
- `protocol_version` is text ("1"), like every identification signal of the vocabulary, so
  sinks can treat manufacturer/model/firmware/protocol alike.
- An all-zero 0x372 or 0x373 counts as "not reported", like an all-NUL text frame.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import can

from canbridge import (
    ALARM_REPORT,
    REPORT_RECEIVED,
    BusRef,
    Context,
    Option,
    Source,
    Update,
    Value,
    hookimpl,
)
from canbridge.databases import builtin_dbc, load_dbc

if TYPE_CHECKING:
    from cantools.database.can import Message, Signal

DBC_NAME = "discover_lynk2"
ACTIVE, NORMAL = 1, 2
REPORTED = frozenset((ACTIVE, NORMAL))
TEXT_BYTES = 8
MAX_LISTED_UNKNOWN = 16

Values = dict[str, Value]


class _Decoder:
    """Decodes one DBC message as `Message.decode(data, decode_choices=False)` does, with the
    layout read from the DBC once: a few times faster per frame than cantools' generic path
    (a day is 475 000 frames). Only plain little-endian integer signals take this path;
    any other message is decoded by cantools itself."""

    __slots__ = ("fields",)

    def __init__(self, message: Message):
        self.fields = tuple(_field(signal) for signal in message.signals)

    @staticmethod
    def supports(message: Message) -> bool:
        return not message.is_multiplexed() and not message.is_container and all(
            s.byte_order == "little_endian" and not s.is_float for s in message.signals)

    def __call__(self, data: bytes | bytearray) -> dict[str, Any]:
        bits = int.from_bytes(data, "little")
        values: dict[str, Any] = {}
        for name, shift, mask, sign, scale, offset in self.fields:
            raw = (bits >> shift) & mask
            if raw & sign:
                raw -= sign << 1
            values[name] = raw if scale is None else raw * scale + offset
        return values


def _field(signal: Signal) -> tuple[str, int, int, int, Any, Any]:
    """(name, shift, mask, sign bit or 0, scale, offset) with cantools' arithmetic: an int
    for scale 1 / offset 0 (scale None here) and for integral ones, else a float."""
    sign = 1 << (signal.length - 1) if signal.is_signed else 0
    scale, offset = signal.scale, signal.offset
    if scale == 1 and offset == 0:
        scale = offset = None
    elif float(scale).is_integer() and float(offset).is_integer():
        scale, offset = int(scale), int(offset)
    return signal.name, signal.start, (1 << signal.length) - 1, sign, scale, offset


class _Frame:
    """One DBC message, prepared once: how to decode, what to round, what to range-check,
    how to convert."""

    __slots__ = ("checks", "convert", "decode", "length", "message", "rounding")

    def __init__(self, message: Message, convert: Callable[[dict[str, Any]], Values | None]):
        self.message = message
        self.length = message.length
        self.convert = convert
        self.decode: Callable[[bytes | bytearray], dict[str, Any]] = (
            _Decoder(message) if _Decoder.supports(message)
            else lambda data: message.decode(data, decode_choices=False))
        self.rounding = [(s.name, _decimals(s.scale)) for s in message.signals
                         if not float(s.scale).is_integer()]
        self.checks = [(s.name, s.minimum, s.maximum) for s in message.signals
                       if _narrower_than_raw(s)]


def _decimals(scale: float) -> int:
    """Decimals of a DBC scale (0.1 -> 1), so 0.1 * 559 reads 55.9, not 55.900000000000006."""
    return max(0, -int(Decimal(str(scale)).as_tuple().exponent))


def _raw_range(signal: Signal) -> tuple[float, float]:
    bits = signal.length
    low, high = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signal.is_signed
                 else (0, (1 << bits) - 1))
    ends = sorted((low * signal.scale + signal.offset, high * signal.scale + signal.offset))
    digits = _decimals(signal.scale)
    return round(ends[0], digits), round(ends[1], digits)


def _narrower_than_raw(signal: Signal) -> bool:
    """Only a DBC range narrower than what the bits can carry needs a per-frame check."""
    if signal.minimum is None or signal.maximum is None:
        return False
    low, high = _raw_range(signal)
    return signal.minimum > low or signal.maximum < high


def _text(raw: int) -> str | None:
    """A NUL-padded ASCII text signal as a string; None when it is empty (all NUL)."""
    return _bytes_text(raw.to_bytes(TEXT_BYTES, "little"))


def _bytes_text(data: bytes) -> str | None:
    text = data.replace(b"\0", b"").decode("ascii", "replace").strip()
    return text or None


class DiscoverLynk2(Source):
    """Decodes the LYNK II frames on `bus` into the battery vocabulary."""

    type_name = "discover-lynk2"
    summary = "reads a Discover AES LYNK II gateway (Discover Serial CAN, 250 kbit/s)"
    options = (
        Option("bus", BusRef(non_empty=True), help="the [buses] table the LYNK II is on"),
    )

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
        self._frames = {m.frame_id: _Frame(m, converters.get(m.name, _as_is))
                        for m in db.messages}
        self._alarm_names = frozenset(
            s.name for s in db.get_message_by_name("AlarmsWarnings").signals
            if s.name.startswith(("alarm_", "warning_")))
        self.frames_in = 0
        self.frames_decoded = 0
        self.frames_unknown = 0
        self.frames_malformed = 0
        self.updates_out = 0
        self._unknown_ids: set[int] = set()
        self._last_seen: float | None = None

    # -- per frame --------------------------------------------------------------------

    def on_frame(self, msg: can.Message) -> None:
        self.frames_in += 1
        if msg.is_error_frame:
            self._malformed("error frame", "an error frame")
            return
        frame = self._frames.get(msg.arbitration_id)
        if frame is None:
            self._unknown(msg)
            return
        data = msg.data
        problem = None
        if msg.is_extended_id:
            problem = "a 29-bit ID (the profile uses 11-bit IDs)"
        elif msg.is_remote_frame:
            problem = "a remote frame"
        elif msg.is_fd:
            problem = "a CAN FD frame"
        elif msg.dlc != frame.length or len(data) != frame.length:
            problem = f"{len(data)} data bytes (DLC {msg.dlc}), expected {frame.length}"
        if problem is not None:
            self._malformed(msg.arbitration_id, problem)
            return
        values = frame.decode(data)
        for name, digits in frame.rounding:
            values[name] = round(values[name], digits)
        for name, low, high in frame.checks:
            value = values[name]
            if value < low or value > high:
                self._malformed(msg.arbitration_id,
                                f"{name} = {value} is outside the DBC range {low}..{high}")
                return
        self.frames_decoded += 1
        self._last_seen = msg.timestamp
        out = frame.convert(values)
        if out:
            self.updates_out += 1
            self.emit(Update(msg.timestamp, out))

    def _malformed(self, key: int | str, problem: str) -> None:
        """Count, and tell the operator at most once a minute per ID (or per error frames)."""
        self.frames_malformed += 1
        label = key if isinstance(key, str) else f"frame 0x{key:03X}"
        self.context.limited.warning(("malformed", key), "%s: %s skipped: %s",
                                     self.name, label, problem)

    def _unknown(self, msg: can.Message) -> None:
        self.frames_unknown += 1
        if len(self._unknown_ids) < MAX_LISTED_UNKNOWN:
            self._unknown_ids.add(msg.arbitration_id)

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

    # -- health -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "state": "waiting" if self._last_seen is None else "ok",
            "frames_in": self.frames_in,
            "frames_decoded": self.frames_decoded,
            "frames_unknown": self.frames_unknown,
            "frames_malformed": self.frames_malformed,
            "unknown_ids": [f"0x{i:03X}" for i in sorted(self._unknown_ids)],
            "updates_out": self.updates_out,
            "errors": self.errors,
            "last_seen_age": self.age(self._last_seen),
        }


def _as_is(values: dict[str, Any]) -> Values:
    return values


@hookimpl
def canbridge_component_types() -> list[type]:
    return [DiscoverLynk2]


@hookimpl
def canbridge_dbc_files() -> list[Path]:
    return [builtin_dbc(DBC_NAME)]
