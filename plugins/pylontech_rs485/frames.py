"""The Pylontech RS485 frame: ASCII hex between `~` and CR, with two checksums.

    ~ VER ADR CID1 CID2 LENGTH INFO CHKSUM CR
      2   2   2    2    4      n    4        (ASCII hex characters)

LENGTH is LENID (the number of INFO characters, 12 bits) under a 4-bit LCHKSUM: the sum of
LENID's three nibbles, mod 16, inverted, plus one. CHKSUM is the sum of every character
between `~` and CHKSUM, mod 65536, inverted, plus one. CID1 is 0x46 for a battery. In a
response CID2 is the return code (RTN): 0x00 normal, 0x01 VER error, 0x02 CHKSUM error,
0x03 LCHKSUM error, 0x04 CID2 invalid, 0x05 command format error, 0x06 invalid data.
canbridge answers only RTN 0x00 and 0x04: a frame it cannot read gets silence, since its
address cannot be trusted on a bus shared with other batteries.

Source: Pylontech "RS485 protocol pylon low voltage V3.3" (2018-08-21), published in the
Frankkkkk/python-pylontech repository; checked against its real frames:
`~20024642E00202FD33` (a request for address 2's analog values).
"""

from __future__ import annotations

from dataclasses import dataclass

SOI, EOI = ord("~"), ord("\r")
CID1_BATTERY = 0x46
RTN_NORMAL, RTN_CID2 = 0x00, 0x04
MAX_INFO_CHARS = 0xFFF


class FrameError(ValueError):
    """A frame that cannot be read; the message says why."""


@dataclass(frozen=True)
class Frame:
    ver: int
    adr: int
    cid1: int
    cid2: int
    info: bytes  # decoded from its ASCII hex


def checksum(body: bytes) -> int:
    """CHKSUM of the characters between `~` and CHKSUM."""
    return -sum(body) & 0xFFFF


def length_field(info_chars: int) -> int:
    """LENGTH for an INFO of `info_chars` ASCII characters: LCHKSUM and LENID."""
    if not 0 <= info_chars <= MAX_INFO_CHARS:
        raise ValueError(f"INFO of {info_chars} characters does not fit LENID")
    nibbles = (info_chars & 0xF) + (info_chars >> 4 & 0xF) + (info_chars >> 8 & 0xF)
    return (-nibbles & 0xF) << 12 | info_chars


def encode(ver: int, adr: int, cid1: int, cid2: int, info: bytes = b"") -> bytes:
    """A whole frame, `~` to CR."""
    info_hex = info.hex().upper().encode()
    body = b"%02X%02X%02X%02X%04X" % (ver, adr, cid1, cid2, length_field(len(info_hex)))
    body += info_hex
    return b"~" + body + b"%04X" % checksum(body) + b"\r"


def decode(frame: bytes) -> Frame:
    """A frame from `~` to CR (both included); FrameError says what is wrong."""
    if len(frame) < 18 or frame[0] != SOI or frame[-1] != EOI:
        raise FrameError(f"not a whole frame ({len(frame)} bytes)")
    body, given = frame[1:-5], frame[-5:-1]
    try:
        text = body.decode("ascii")
        ver, adr, cid1, cid2 = (int(text[i:i + 2], 16) for i in (0, 2, 4, 6))
        length = int(text[8:12], 16)
        expected = int(given.decode("ascii"), 16)
    except (UnicodeDecodeError, ValueError):
        raise FrameError("not ASCII hex") from None
    if checksum(body) != expected:
        raise FrameError(f"CHKSUM {expected:04X}, expected {checksum(body):04X}")
    info_chars = length & MAX_INFO_CHARS
    if length_field(info_chars) != length:
        raise FrameError(f"LCHKSUM of LENGTH {length:04X} is wrong")
    info_hex = text[12:]
    if len(info_hex) != info_chars:
        raise FrameError(f"LENID says {info_chars} INFO characters, the frame has "
                         f"{len(info_hex)}")
    try:
        info = bytes.fromhex(info_hex)
    except ValueError:
        raise FrameError("INFO is not hex") from None
    return Frame(ver, adr, cid1, cid2, info)
