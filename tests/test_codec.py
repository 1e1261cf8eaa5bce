"""The core codec against cantools, the reference: every message of every shipped DBC and of
a test DBC with big-endian, signed, float, multiplexed, 29-bit and unranged messages, on random
frames and random values. The codec is built from the cached layouts, as at run time; cantools'
own parse of the same file is the reference."""

from __future__ import annotations

import math
from pathlib import Path

import cantools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canbridge import CodecError, Decoder, Encoder
from canbridge.codec import compiled, decimals
from canbridge.databases import builtin_dbc, load_dbc, parse_dbc

TEST_DBC_PATH = Path(__file__).resolve().parent / "data" / "codec_test.dbc"
TEST_DBC = parse_dbc(TEST_DBC_PATH)
OURS = load_dbc(TEST_DBC_PATH)


def pairs(path):
    """(cantools' message, our layout of it) for every message of a DBC."""
    return list(zip(parse_dbc(path).messages, load_dbc(path).messages, strict=True))


SHIPPED = [pair for name in ("discover_lynk2", "pylontech", "pylontech_decivolt")
           for pair in pairs(builtin_dbc(name))]
EVERY = [*SHIPPED, *pairs(TEST_DBC_PATH)]


def in_range(signal, value) -> bool:
    return ((signal.minimum is None or value >= signal.minimum - 1e-9)
            and (signal.maximum is None or value <= signal.maximum + 1e-9))


def test_the_shipped_dbcs_take_the_compiled_path_and_the_test_dbc_both():
    assert all(compiled(layout) for _, layout in SHIPPED)
    assert {m.name: compiled(m) for m in OURS.messages} == {
        "BigEndian": False, "Signed": True, "Floats": False, "Muxed": False, "Unranged": True,
        "Extended": True}


@settings(max_examples=600, deadline=None)
@given(pair=st.sampled_from(EVERY), seed=st.randoms(use_true_random=False))
def test_decoding_a_random_frame_gives_cantools_answer_or_the_reason(pair, seed):
    message, layout = pair
    data = seed.randbytes(message.length)
    try:
        reference = message.decode(data, decode_choices=False)
    except cantools.database.DecodeError:  # a multiplexer value the DBC does not know
        with pytest.raises(CodecError):
            Decoder(layout)(data)
        return
    out_of_range = [s.name for s in message.signals if s.name in reference
                    and not s.is_float and not in_range(s, reference[s.name])]
    if out_of_range:
        with pytest.raises(CodecError, match=r"is outside the DBC range"):
            Decoder(layout)(data)
        return
    ours = Decoder(layout)(data)
    assert list(ours) == list(reference)
    for signal in message.signals:
        if signal.name not in reference:
            continue
        expected = reference[signal.name]
        if signal.is_float:
            assert ours[signal.name] == expected or (math.isnan(expected)
                                                     and math.isnan(ours[signal.name]))
        else:
            # Rounded to the decimals of the scale: the same number without float noise.
            assert ours[signal.name] == round(expected, decimals(signal.scale))
            assert type(ours[signal.name]) is type(expected) or isinstance(expected, float)


def test_a_value_is_rounded_to_the_decimals_of_its_scale():
    assert [decimals(scale) for scale in (1, 10, 0.5, 0.1, 0.25, 0.001, 1e-05)] == [
        0, 0, 1, 1, 2, 3, 5]


def test_a_value_out_of_the_dbc_range_is_refused_with_its_reason():
    soc = load_dbc(builtin_dbc("discover_lynk2")).get_message_by_name("StateOfCharge")
    with pytest.raises(CodecError) as excinfo:
        Decoder(soc)(bytes([101, 0, 100, 0, 0, 0, 0, 0]))
    assert str(excinfo.value) == "soc = 101 is outside the DBC range 0..100"


def test_the_range_check_of_the_cantools_path_includes_its_ends():
    big_endian = TEST_DBC.get_message_by_name("BigEndian")
    decode = Decoder(OURS.get_message_by_name("BigEndian"))
    values = {"pack_voltage": 53.5, "pack_current": 0, "state": 0}
    assert decode(big_endian.encode({**values, "cell_count": 200}))["cell_count"] == 200
    with pytest.raises(CodecError, match=r"^cell_count = 201 is outside the DBC range 0..200$"):
        decode(big_endian.encode({**values, "cell_count": 201}, strict=False))


def test_choices_can_come_out_as_their_names():
    signed = TEST_DBC.get_message_by_name("Signed")
    data = signed.encode({"temperature": 20, "offset_count": 7, "small": 1, "mode": 1,
                          "level": 50})
    ours = OURS.get_message_by_name("Signed")
    assert Decoder(ours)(data)["mode"] == 1
    assert Decoder(ours, choices=True)(data)["mode"] == "charging"


def encodable_values(message):
    """Physical values within (and a little beyond) each signal's DBC range, as floats and
    as integers (a cap from a TOML file is an int, and must still be scaled)."""
    def signal_values(signal):
        low = signal.minimum if signal.minimum is not None else -1000
        high = signal.maximum if signal.maximum is not None else 1000
        span = (high - low) or 1
        low, high = low - span / 10, high + span / 10
        return st.floats(low, high, allow_nan=False) | st.integers(math.ceil(low),
                                                                    math.floor(high))
    if message.is_multiplexed():
        return st.sampled_from([0, 1]).flatmap(lambda page: st.fixed_dictionaries({
            "page": st.just(page),
            **{s.name: signal_values(s) for s in message.signals
               if s.multiplexer_ids and page in s.multiplexer_ids}}))
    return st.fixed_dictionaries({s.name: signal_values(s) for s in message.signals})


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_encoding_saturates_rounds_and_decodes_back_as_cantools_reads_it(data):
    message, layout = data.draw(st.sampled_from(EVERY))
    values = data.draw(encodable_values(message))
    clamped: list[str] = []
    frame = Encoder(layout).encode(values, clamped)
    assert len(frame) == message.length
    back = message.decode(frame, decode_choices=False)
    for signal in message.signals:
        if signal.name not in values:
            continue
        given_value = values[signal.name]
        got = back[signal.name]
        if signal.is_float:  # no steps: saturated at the DBC range, else as given
            held = min(max(given_value, signal.minimum), signal.maximum)
            assert got == pytest.approx(held, rel=1e-6)
            assert (signal.name in clamped) is (held != given_value)
            continue
        low, high = signal_range(signal)
        step = signal.scale
        if given_value < low - step or given_value > high + step:
            assert signal.name in clamped  # saturated, never wrapped
            assert got == pytest.approx(min(max(given_value, low), high), abs=step)
        elif low <= given_value <= high:
            assert got == pytest.approx(given_value, abs=step / 2 + 1e-9)
            assert signal.name not in clamped
        else:  # within a step of an end: rounds to it, clamped or not
            assert low - 1e-9 <= got <= high + 1e-9


def signal_range(signal) -> tuple[float, float]:
    """The DBC range, or without one (`[0|0]`) what the signal's bits carry."""
    if signal.minimum is not None and signal.maximum is not None:
        return signal.minimum, signal.maximum
    half = 1 << signal.length - 1
    low, high = (-half, half - 1) if signal.is_signed else (0, 2 * half - 1)
    return low * signal.scale + signal.offset, high * signal.scale + signal.offset


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_an_encoder_remembering_its_last_frame_encodes_as_a_fresh_one(data):
    """A burst repeats most frames; the reused bytes and clamped names must be exact."""
    message, layout = data.draw(st.sampled_from(EVERY))
    steps = data.draw(st.lists(encodable_values(message), min_size=1, max_size=3))
    kept = Encoder(layout)
    for values in [step for step in steps for _ in range(2)]:
        kept_clamped: list[str] = []
        fresh_clamped: list[str] = []
        assert kept.encode(values, kept_clamped) == Encoder(layout).encode(values,
                                                                           fresh_clamped)
        assert kept_clamped == fresh_clamped
    again: list[str] = []
    assert kept.encode(values, again) is kept.encode(values, again)  # not encoded again


def test_rounding_goes_to_the_side_the_caller_names():
    limits = parse_dbc(builtin_dbc("pylontech")).get_message_by_name("Limits")
    ours = load_dbc(builtin_dbc("pylontech")).get_message_by_name("Limits")
    values = {"charge_voltage_limit": 55.96, "charge_current_limit": 28.25,
              "discharge_current_limit": 0.09, "discharge_voltage_limit": 43.21}
    safe = Encoder(ours, {"charge_voltage_limit": "down", "charge_current_limit": "down",
                            "discharge_current_limit": "down",
                            "discharge_voltage_limit": "up"}).encode(values, [])
    assert limits.decode(safe) == pytest.approx({
        "charge_voltage_limit": 55.9, "charge_current_limit": 28.2,
        "discharge_current_limit": 0.0, "discharge_voltage_limit": 43.3})
    nearest = Encoder(ours).encode(values, [])
    assert limits.decode(nearest)["charge_voltage_limit"] == pytest.approx(56.0)


def test_a_29_bit_message_keeps_its_flag_in_the_dbc_convention():
    extended = OURS.get_message_by_name("Extended")
    assert extended.is_extended_frame and extended.frame_id == 0x18FF50E5
    assert cantools.database.can.Database  # the reference itself is what we compare with
