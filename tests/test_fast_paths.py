"""The per-frame fast paths give exactly what the generic code they replace gives.

Fast paths exist for speed (see benchmarks/): a candump reader in the replay bus, a
DBC-derived decoder in the LYNK II source, and the Pylontech encoder reusing its last frame.
Each is checked here against the generic path on the same input (python-can, cantools, a
fresh encoder), so the DBC stays the single source of the frame layouts.
"""

from __future__ import annotations

from pathlib import Path

import can
from canbridge_plugins.discover_lynk2 import _Decoder
from canbridge_plugins.pylontech import BURST_IDS, FrameEncoder, _Field
from hypothesis import given, settings
from hypothesis import strategies as st

from canbridge.databases import builtin_dbc, load_dbc
from canbridge.replay import read_capture

LYNK2 = load_dbc(builtin_dbc("discover_lynk2"))
SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "captures" / "lynk2-sample.log"

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


def test_every_lynk2_message_takes_the_fast_decoder() -> None:
    assert all(_Decoder.supports(message) for message in LYNK2.messages)


@settings(max_examples=300)
@given(st.sampled_from(LYNK2.messages), st.randoms(use_true_random=False))
def test_fast_decoder_equals_cantools(message, rng) -> None:
    data = rng.randbytes(message.length)
    fast = _Decoder(message)(data)
    slow = message.decode(data, decode_choices=False)
    assert list(fast.items()) == list(slow.items())
    assert [type(v) for v in fast.values()] == [type(v) for v in slow.values()]


PYLONTECH = load_dbc(builtin_dbc("pylontech"))
BURST = [PYLONTECH.get_message_by_frame_id(i) for i in BURST_IDS]


def field_values(field: _Field) -> st.SearchStrategy:
    if field.choices:
        return st.sampled_from(sorted(field.choices))
    if field.mask == 1:
        return st.booleans()
    return st.one_of(st.integers(-(1 << 20), 1 << 20),
                     st.floats(-1e5, 1e5, allow_nan=False).map(lambda x: round(x, 2)))


def frame_inputs(message) -> st.SearchStrategy:
    fields = FrameEncoder(message).fields
    return st.fixed_dictionaries({f.name: field_values(f) for f in fields})


@settings(max_examples=200)
@given(st.data())
def test_the_encoder_remembering_its_last_frame_encodes_as_a_fresh_one(data) -> None:
    """A burst repeats most frames; the reused bytes and clamped names must be exact."""
    message = data.draw(st.sampled_from(BURST))
    steps = data.draw(st.lists(frame_inputs(message), min_size=1, max_size=4))
    steps = [step for step in steps for _ in range(2)]  # every input twice in a row
    kept = FrameEncoder(message)
    for values in steps:
        kept_clamped: list[str] = []
        fresh_clamped: list[str] = []
        assert (kept.encode(values, kept_clamped)
                == FrameEncoder(message).encode(values, fresh_clamped))
        assert kept_clamped == fresh_clamped
