"""A source that decodes a DBC's messages from its bus with the core codec.

`FrameSource` does what every battery source does with frames: it finds the message by its
ID (the ID width is part of the ID), skips and counts what is malformed (wrong length,
remote, error or CAN FD frames, the right ID in the wrong width, a value outside the DBC
range) with a rate-limited log line, counts what is not its own, and emits one update per
decoded frame. A subclass says, per message, how a decoded frame becomes vocabulary values
(`convert`); returning None or an empty dict emits nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from canbridge.codec import CodecError, Decoder
from canbridge.component import Context, Source
from canbridge.signals import Update, Value

if TYPE_CHECKING:
    import can

    from canbridge.codec import Message

Values = dict[str, Value]
Convert = Callable[[dict[str, Any]], "Values | None"]
MAX_LISTED_UNKNOWN = 16
EXTENDED = 0x80000000


def as_is(values: dict[str, Any]) -> Values:
    return values


class _Frame:
    __slots__ = ("convert", "decode", "last_data", "last_out", "length", "repeats")

    def __init__(self, message: Message, convert: Convert, repeats: bool):
        self.length = message.length
        self.decode = Decoder(message).decode
        self.convert = convert
        self.repeats = repeats
        self.last_data: bytes | None = None
        self.last_out: Values | None = None


class FrameSource(Source):
    """Base of sources that decode DBC messages; subclasses call `add_message`."""

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        # Keyed by the DBC convention: a 29-bit ID has 0x80000000 added.
        self._frames: dict[int, _Frame] = {}
        self._ids: set[int] = set()
        self.frames_in = 0
        self.frames_decoded = 0
        self.frames_unknown = 0
        self.frames_malformed = 0
        self.updates_out = 0
        self._unknown_ids: set[int] = set()
        self._last_seen: float | None = None

    def add_message(self, message: Message, convert: Convert = as_is, *,
                    repeats: bool = True) -> None:
        """Decode `message` and turn its values into vocabulary values with `convert`.

        With `repeats` (a convert that depends on the frame alone), a frame with the same
        data bytes as the previous one of its ID gives the same values without decoding
        again: most frames of a battery repeat their predecessor. A convert that joins
        several frames (two halves of a name) says `repeats=False`."""
        key = message.frame_id | (EXTENDED if message.is_extended_frame else 0)
        self._frames[key] = _Frame(message, convert, repeats)
        self._ids.add(message.frame_id)

    def on_frame(self, msg: can.Message) -> None:
        self.frames_in += 1
        if msg.is_error_frame:
            self._malformed("error frame", "an error frame")
            return
        frame_id = msg.arbitration_id
        frame = self._frames.get(frame_id | EXTENDED if msg.is_extended_id else frame_id)
        if frame is None:
            if frame_id in self._ids:
                width, other = (29, 11) if msg.is_extended_id else (11, 29)
                self._malformed(frame_id, f"a {width}-bit ID (the DBC has it as {other}-bit)")
            else:
                self._unknown(msg)
            return
        data = msg.data
        problem = None
        if msg.is_remote_frame:
            problem = "a remote frame"
        elif msg.is_fd:
            problem = "a CAN FD frame"
        elif msg.dlc != frame.length or len(data) != frame.length:
            problem = f"{len(data)} data bytes (DLC {msg.dlc}), expected {frame.length}"
        if problem is not None:
            self._malformed(frame_id, problem)
            return
        if data == frame.last_data:
            out = frame.last_out
        else:
            try:
                values = frame.decode(data)
            except CodecError as exc:
                self._malformed(frame_id, str(exc))
                return
            out = frame.convert(values)
            if frame.repeats:
                frame.last_data, frame.last_out = bytes(data), out
        self.frames_decoded += 1
        self._last_seen = msg.timestamp
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
