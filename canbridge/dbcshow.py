"""`canbridge dbc show NAME|PATH`: a DBC file's frames and signals, readable in a terminal."""

from __future__ import annotations

from cantools.database.can import Database, Message


def describe_database(db: Database) -> str:
    return "\n\n".join(_describe_message(m) for m in sorted(db.messages,
                                                            key=lambda m: m.frame_id))


def _describe_message(message: Message) -> str:
    cycle = message.cycle_time
    head = (f"0x{message.frame_id:03X}{' (29-bit)' if message.is_extended_frame else ''} "
            f"{message.name}  {message.length} bytes"
            f"{f'  every {cycle} ms' if cycle else ''}"
            f"{'  from ' + ', '.join(message.senders) if message.senders else ''}")
    lines = [head]
    if message.comment:
        lines.append(f"  {message.comment}")
    for signal in sorted(message.signals, key=lambda s: s.start):
        order = "LE" if signal.byte_order == "little_endian" else "BE"
        sign = "signed" if signal.is_signed else "unsigned"
        unit = f" {signal.unit}" if signal.unit else ""
        lo = "" if signal.minimum is None else f"{signal.minimum:g}"
        hi = "" if signal.maximum is None else f"{signal.maximum:g}"
        limits = f"  [{lo} .. {hi}]{unit}" if lo or hi else unit
        lines.append(f"  bit {signal.start:2d}+{signal.length:<2d} {order} {sign:8s} "
                     f"x{signal.scale:g}{f' {signal.offset:+g}' if signal.offset else ''}"
                     f"  {signal.name}{limits}")
        if signal.choices:
            choices = ", ".join(f"{k}={v}" for k, v in sorted(signal.choices.items()))
            lines.append(f"      values: {choices}")
        if signal.comment:
            lines.append(f"      {signal.comment}")
    return "\n".join(lines)
