"""One compiled DBC codec for every plugin: a DBC message (a cached layout or a cantools
message), read once, becomes a decoder (raw bits to physical values) and an encoder
(physical values to bits).

- `Decoder`: scale and offset as the DBC says, each value rounded to the decimals of its
  scale (55.9, not 55.900000000000006), a value outside the DBC's min/max refused with the
  reason (`CodecError`), choice signals as their raw number or, with `choices=True`, the
  choice's name. A plain little-endian message with integer signals gets one generated,
  straight-line function; big-endian, float and multiplexed messages are decoded by cantools
  itself (slower, the same answer).
- `Encoder`: each value rounded towards the side the caller names per signal ("down" for a
  limit that must never be exceeded, "up" for a cut-out) or to the nearest step, then held
  to the DBC range (saturation, never wrapping) with the names of clamped signals reported.
  Equal inputs give equal bytes without encoding again (a burst repeats most frames).

cantools stays the reference: the tests hold both paths to its answers on random frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from canbridge.databases import MessageLayout

if TYPE_CHECKING:
    from cantools.database.can import Message as CantoolsMessage

    from canbridge.databases import SignalLayout as Signal

    Message = MessageLayout | CantoolsMessage

EPSILON = 1e-6
"""In raw steps: float noise such as 55.9 / 0.1 = 558.9999999 never costs a whole step."""

ROUNDING: dict[str, Callable[[float], int]] = {
    "down": lambda x: math.floor(x + EPSILON),
    "up": lambda x: math.ceil(x - EPSILON),
    "nearest": round,
}


class CodecError(ValueError):
    """A frame (or a value) the DBC does not allow; the message says which signal and why."""


def decimals(scale: float) -> int:
    """Decimals of a DBC scale (0.1 -> 1), so 0.1 * 559 reads 55.9."""
    return max(0, -int(Decimal(str(scale)).as_tuple().exponent))  # type: ignore[operator]


def raw_range(signal: Signal) -> tuple[int, int]:
    """The raw integers the signal's bits can carry."""
    bits = signal.length
    if signal.is_signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _physical_range(signal: Signal) -> tuple[float, float]:
    low, high = raw_range(signal)
    ends = sorted((low * signal.scale + signal.offset, high * signal.scale + signal.offset))
    digits = decimals(signal.scale)
    return round(ends[0], digits), round(ends[1], digits)


def _checked_range(signal: Signal) -> tuple[float, float] | None:
    """The DBC range when it is narrower than what the bits carry (else no check is needed)."""
    if signal.minimum is None or signal.maximum is None or signal.is_float:
        return None
    low, high = _physical_range(signal)
    if signal.minimum > low or signal.maximum < high:
        return signal.minimum, signal.maximum
    return None


def cantools_message(message: Message) -> CantoolsMessage:
    """cantools' own message, for what the generated code does not do."""
    return message.cantools() if isinstance(message, MessageLayout) else message


def compiled(message: Message) -> bool:
    """Whether the fast, generated path serves `message`."""
    return not message.is_multiplexed() and not message.is_container and all(
        s.byte_order == "little_endian" and not s.is_float for s in message.signals)


class Decoder:
    """Decodes the data bytes of one message; `decoder(data)` -> {signal: value}."""

    def __init__(self, message: Message, *, choices: bool = False):
        self.message = message
        self.choices = {s.name: {int(k): str(v) for k, v in s.choices.items()}
                        for s in message.signals if choices and s.choices}
        self.compiled = compiled(message)
        decode = _generate_decoder(message) if self.compiled else self._with_cantools()
        if self.choices:
            decode = self._naming_choices(decode)
        self.decode: Callable[[bytes | bytearray], dict[str, Any]] = decode
        """The decoding function itself (a plain function: the fastest to call)."""

    def __call__(self, data: bytes | bytearray) -> dict[str, Any]:
        return self.decode(data)

    def _naming_choices(self, decode: Callable[[bytes | bytearray], dict[str, Any]]
                        ) -> Callable[[bytes | bytearray], dict[str, Any]]:
        tables = self.choices

        def named(data: bytes | bytearray) -> dict[str, Any]:
            values = decode(data)
            for name, table in tables.items():
                if name in values:
                    values[name] = table.get(values[name], values[name])
            return values

        return named

    def _with_cantools(self) -> Callable[[bytes | bytearray], dict[str, Any]]:
        from cantools.database import DecodeError

        message = cantools_message(self.message)
        rounding = [(s.name, decimals(s.scale)) for s in message.signals
                    if not s.is_float and not float(s.scale).is_integer()]
        checks = [(s.name, *bounds) for s in message.signals
                  if (bounds := _checked_range(s)) is not None]

        def decode(data: bytes | bytearray) -> dict[str, Any]:
            try:
                values = dict(message.decode(bytes(data), decode_choices=False))
            except DecodeError as exc:
                raise CodecError(str(exc)) from None
            for name, digits in rounding:
                if name in values:
                    values[name] = round(values[name], digits)
            for name, low, high in checks:
                if name in values and not low <= values[name] <= high:
                    raise CodecError(f"{name} = {values[name]} is outside the DBC range "
                                     f"{low}..{high}")
            return values

        return decode


def _generate_decoder(message: Message) -> Callable[[bytes | bytearray], dict[str, Any]]:
    """One straight-line function for the whole message: no loop, no lookups per signal."""
    lines = ["def decode(data):", "    bits = int.from_bytes(data, 'little')"]
    outputs = []
    env: dict[str, Any] = {"CodecError": CodecError}
    for i, signal in enumerate(message.signals):
        var = f"v{i}"
        mask = (1 << signal.length) - 1
        lines.append(f"    {var} = (bits >> {signal.start}) & {mask:#x}")
        if signal.is_signed:
            sign = 1 << (signal.length - 1)
            lines.append(f"    if {var} & {sign:#x}: {var} -= {sign << 1:#x}")
        scale, offset = signal.scale, signal.offset
        if float(scale).is_integer() and float(offset).is_integer():
            if (scale, offset) != (1, 0):
                lines.append(f"    {var} = {var} * {int(scale)} + {int(offset)}")
        else:
            lines.append(f"    {var} = round({var} * {scale!r} + {offset!r}, "
                         f"{decimals(scale)})")
        bounds = _checked_range(signal)
        if bounds is not None:
            low, high = bounds
            env[f"r{i}"] = f"{signal.name} = {{}} is outside the DBC range {low}..{high}"
            lines.append(f"    if not {low!r} <= {var} <= {high!r}: "
                         f"raise CodecError(r{i}.format({var}))")
        outputs.append(f"{signal.name!r}: {var}")
    lines.append("    return {" + ", ".join(outputs) + "}")
    exec(compile("\n".join(lines), f"<codec {message.name}>", "exec"), env)
    decode: Callable[[bytes | bytearray], dict[str, Any]] = env["decode"]
    return decode


class _Field:
    """One signal's layout for encoding: how a physical value becomes raw bits."""

    __slots__ = ("choices", "identity", "mask", "name", "offset", "raw_max", "raw_min",
                 "rounding", "scale", "shift")

    def __init__(self, signal: Signal, rounding: str):
        self.name = signal.name
        self.shift = signal.start
        self.mask = (1 << signal.length) - 1  # two's complement of a signed raw, to its width
        self.scale = signal.scale
        self.offset = signal.offset
        self.identity = signal.scale == 1 and signal.offset == 0
        self.rounding = ROUNDING[rounding]
        if signal.is_float:  # an IEEE value: no rounding to steps, only the DBC range
            self.rounding = float  # type: ignore[assignment]
            low, high = -math.inf, math.inf
        else:
            low, high = raw_range(signal)
        # The DBC's physical range narrows the bit range (CCL >= 0: never a negative limit).
        if signal.minimum is not None:
            low = max(low, math.ceil((signal.minimum - self.offset) / self.scale - EPSILON))
        if signal.maximum is not None:
            high = min(high, math.floor((signal.maximum - self.offset) / self.scale + EPSILON))
        self.raw_min, self.raw_max = low, high
        self.choices = {str(text): raw for raw, text in (signal.choices or {}).items()}

    def raw(self, value: Any) -> tuple[Any, bool]:
        """The raw integer for `value`, and whether it had to be clamped into range."""
        if isinstance(value, str):
            if value not in self.choices:
                raise CodecError(f"{self.name}: {value!r} is not one of its choices")
            raw = self.choices[value]
        elif self.identity and isinstance(value, int):
            raw = value  # exact, even for a 64-bit text signal
        else:
            raw = self.rounding((value - self.offset) / self.scale)
        if raw < self.raw_min:
            return self.raw_min, True
        if raw > self.raw_max:
            return self.raw_max, True
        return raw, False


class Encoder:
    """Packs one message from physical values: `encoder.encode(values, clamped)` -> bytes.

    `rounding` names the safe side per signal ("down", "up"); any other signal is rounded to
    the nearest step. Every signal of the message must be given.
    """

    def __init__(self, message: Message, rounding: Mapping[str, str] | None = None):
        rounding = rounding or {}
        self.message = message
        self.frame_id = message.frame_id
        self.length = message.length
        self.fields = tuple(_Field(s, rounding.get(s.name, "nearest")) for s in message.signals)
        self._names = tuple(field.name for field in self.fields)
        self._fast = compiled(message)
        # The last inputs and what they gave: equal inputs encode to equal bytes.
        self._last: tuple[tuple[Any, ...], bytes, tuple[str, ...]] | None = None

    def encode(self, values: Mapping[str, Any], clamped: list[str]) -> bytes:
        """The frame's data bytes; names of signals that were out of range go to `clamped`.
        A multiplexed message takes the signals of the chosen multiplexer value only."""
        fast = self._fast
        inputs = tuple([values[name] if fast else values.get(name) for name in self._names])
        last = self._last
        if last is not None and last[0] == inputs:
            clamped.extend(last[2])
            return last[1]
        out_of_range: list[str] = []
        raws: dict[str, int] = {}
        for field, value in zip(self.fields, inputs, strict=True):
            if value is None:
                continue
            raw, clamp = field.raw(value)
            if clamp:
                out_of_range.append(field.name)
            raws[field.name] = raw
        if fast:
            bits = 0
            for field in self.fields:
                bits |= (raws[field.name] & field.mask) << field.shift
            data = bits.to_bytes(self.length, "little")
        else:
            data = bytes(cantools_message(self.message).encode(raws, scaling=False,
                                                               strict=False))
        self._last = (inputs, data, tuple(out_of_range))
        clamped.extend(out_of_range)
        return data
