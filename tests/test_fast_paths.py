"""The replay bus's candump fast path gives exactly what python-can gives.

(The codec's fast paths are held to cantools in test_codec.py.)
"""

from __future__ import annotations

from pathlib import Path

import can
import pytest
from conftest import SAMPLE

from canbridge.replay import read_capture

TRICKY_LINES = """\
(1.000000) can0 351#2F02040B040BB001
(1.500000) can0 12345678#0102
(2.000000) vcan1 35A#
(2.100000) 0 123#R
(2.200000) can0 123#R4
(2.300000) can0 20000080#0000000000000000
(2.350000) can0 20000001#AA
(2.400000) can0 123##1DEADBEEF
(2.500000) can0 123#11 T
(2.600000) can0 123#11 R

(2.700000) can0 7FF#0011223344556677
"""


def same(a: can.Message, b: can.Message) -> bool:
    return (a.equals(b, timestamp_delta=0) and a.channel == b.channel and a.is_rx == b.is_rx
            and a.dlc == b.dlc and a.is_error_frame == b.is_error_frame)


def test_candump_reader_matches_python_can_on_every_kind_of_line(tmp_path: Path) -> None:
    path = tmp_path / "tricky.log"
    path.write_text(TRICKY_LINES)
    ours, theirs = list(read_capture(str(path))), list(can.LogReader(str(path)))
    assert len(ours) == len(theirs) == 11
    assert [same(a, b) for a, b in zip(ours, theirs, strict=True)] == [True] * 11


@pytest.mark.parametrize("bad", ["(2.0) can0 123#GG", "(2.0) can0 XYZ#11", "(two) can0 123#11"])
def test_a_line_it_cannot_parse_is_python_cans_to_refuse(tmp_path: Path, bad: str) -> None:
    """Never a frame made up from the line before: python-can's reader says what is wrong."""
    path = tmp_path / "bad.log"
    path.write_text(f"(1.000000) can0 351#2F02040B040BB001\n{bad}\n")
    frames = read_capture(str(path))
    assert next(frames).arbitration_id == 0x351
    with pytest.raises(ValueError):
        next(frames)


def test_candump_reader_matches_python_can_on_the_real_capture() -> None:
    ours, theirs = list(read_capture(str(SAMPLE))), list(can.LogReader(str(SAMPLE)))
    assert len(ours) == len(theirs) > 50
    assert all(same(a, b) for a, b in zip(ours, theirs, strict=True))


def test_other_formats_go_through_python_can(tmp_path: Path) -> None:
    path = tmp_path / "c.asc"
    with can.ASCWriter(str(path)) as writer:
        writer.on_message_received(can.Message(timestamp=5.0, arbitration_id=0x356,
                                               data=b"\x17\x02", is_extended_id=False))
    assert [(m.arbitration_id, bytes(m.data)) for m in read_capture(str(path))] == [
        (0x356, b"\x17\x02")]
