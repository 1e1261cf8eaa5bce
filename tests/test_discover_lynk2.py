"""The discover-lynk2 source: golden capture, 0x35A field order, bad frames, fuzzing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import can
import pytest
from canbridge_plugins.discover_lynk2 import DiscoverLynk2
from conftest import SAMPLE, run_canbridge
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canbridge import Clock, Update
from canbridge.databases import builtin_dbc, parse_dbc
from canbridge.testing import build, capture

DB = parse_dbc(builtin_dbc("discover_lynk2"))
T0 = 1000.0

STEADY_35A = bytes.fromhex("ABAAFEAFAAFAFF")
# Field numbers from the protocol document, written out independently of the DBC.
FIELDS = {
    "alarm_general": 0, "alarm_high_voltage": 1, "alarm_low_voltage": 2,
    "alarm_high_temp_discharge": 3, "alarm_low_temp_discharge": 4,
    "alarm_high_temp_charge": 5, "alarm_low_temp_charge": 6,
    "alarm_high_discharge_current": 7, "alarm_high_charge_current": 8,
    "alarm_internal": 10, "alarm_cell_imbalance": 11,
    "warning_high_voltage": 14, "warning_low_voltage": 15,
    "warning_high_temp_discharge": 16, "warning_low_temp_discharge": 17,
    "warning_high_temp_charge": 18, "warning_low_temp_charge": 19,
    "warning_high_discharge_current": 20, "warning_high_charge_current": 21,
    "warning_internal": 23, "warning_cell_imbalance": 24,
}
RESERVED = (9, 12, 13, 22, 25, 26, 27)
# What the steady frame says: fields 1-8 and 14-21 normal, everything else not supported.
STEADY_VALUES = {**{name: False for name, k in FIELDS.items() if 1 <= k <= 8 or 14 <= k <= 21},
                 "alarm_report": "received"}


def make_source(clock: Clock | None = None) -> tuple[DiscoverLynk2, list[Update]]:
    source = build(DiscoverLynk2, {"bus": "battery"}, clock=clock or Clock(virtual=True, start=T0))
    return source, capture(source)


def frame(frame_id: int, data: bytes | str, ts: float = T0, **flags: bool) -> can.Message:
    payload = bytes.fromhex(data) if isinstance(data, str) else data
    return can.Message(timestamp=ts, arbitration_id=frame_id, data=payload,
                       is_extended_id=flags.pop("is_extended_id", False), check=False, **flags)


def with_field(data: bytes, k: int, value: int) -> bytes:
    """`data` with 2-bit field k (start bit 2k, little endian) set to `value`."""
    raw = int.from_bytes(data, "little") & ~(0b11 << 2 * k) | value << 2 * k
    return raw.to_bytes(len(data), "little")


# -- golden capture ---------------------------------------------------------------------

LIMITS = {"charge_voltage_limit": 55.9, "charge_current_limit": 282.0,
          "discharge_current_limit": 282.0, "discharge_voltage_limit": 43.2}
CAPACITY = {"capacity_nominal": 300, "capacity_remaining": 216}
SOC = {"soc": 72, "soh": 100}
# 0x356 current bytes in the capture, second by second: 04 00, 05 00, 04 00, 03 00, 02 00,
# 02 00, 02 00, FE FF, 03 00.
CURRENTS = [0.4, 0.5, 0.4, 0.3, 0.2, 0.2, 0.2, -0.2, 0.3]


def test_sample_capture_decodes_to_the_documented_values() -> None:
    messages = list(can.LogReader(str(SAMPLE)))
    clock = Clock(virtual=True, start=messages[0].timestamp)
    source, out = make_source(clock)
    for msg in messages:
        clock.advance_to(msg.timestamp)
        source.on_frame(msg)

    currents = iter(CURRENTS)
    expected_by_id = {
        0x351: lambda: LIMITS, 0x354: lambda: CAPACITY, 0x355: lambda: SOC,
        0x356: lambda: {"voltage": 53.5, "current": next(currents), "temperature": 28.0},
        0x35A: lambda: STEADY_VALUES, 0x35E: lambda: {"manufacturer": "DISCOVER"},
        0x372: lambda: {"firmware_version": "2.1.0.0"}, 0x373: lambda: {"protocol_version": "1"},
    }
    # 0x370 and 0x371 are all NUL in this capture: no model; 0x300 and 0x305 are unknown.
    expected = [Update(m.timestamp, expected_by_id[m.arbitration_id]()) for m in messages
                if m.arbitration_id in expected_by_id]
    assert out == expected
    assert next(currents, None) is None
    # Exact floats, as a person reads them, not 55.900000000000006.
    assert repr(out[0].values["charge_voltage_limit"]) == "55.9"
    assert all("model" not in u.values for u in out)
    status = source.status()
    assert {k: status[k] for k in ("state", "frames_in", "frames_decoded", "frames_unknown",
                                   "frames_malformed", "updates_out", "unknown_ids")} == {
        "state": "ok", "frames_in": 71, "frames_decoded": 50, "frames_unknown": 21,
        "frames_malformed": 0, "updates_out": 48, "unknown_ids": ["0x300", "0x305"]}
    assert status["last_seen_age"] == 0.0


def test_model_is_both_halves_joined_once_both_arrived() -> None:
    source, out = make_source()
    source.on_frame(frame(0x370, b"Discover"))
    assert out == []
    source.on_frame(frame(0x371, b" AES\0\0\0\0", ts=T0 + 0.5))
    assert out == [Update(T0 + 0.5, {"model": "Discover AES"})]
    source.on_frame(frame(0x370, b"Discover", ts=T0 + 10))
    assert out[-1] == Update(T0 + 10, {"model": "Discover AES"})


def test_a_repeated_half_joins_the_other_half_as_it_is_now() -> None:
    # The same 0x370 bytes again must not give the model of before: the other half changed.
    source, out = make_source()
    source.on_frame(frame(0x370, b"Discover"))
    source.on_frame(frame(0x371, b" AES\0\0\0\0", ts=T0 + 0.5))
    source.on_frame(frame(0x371, b" LYNK\0\0\0", ts=T0 + 10.5))
    source.on_frame(frame(0x370, b"Discover", ts=T0 + 20))
    assert out[-1] == Update(T0 + 20, {"model": "Discover LYNK"})


def test_a_repeated_frame_gives_the_same_values_without_decoding_again() -> None:
    source, out = make_source()
    decode = source._frames[0x356].decode
    calls = []
    source._frames[0x356].decode = lambda data: calls.append(data) or decode(data)
    for ts, data in ((T0, "1702ECFF9CFF0000"), (T0 + 1, "1702ECFF9CFF0000"),
                     (T0 + 2, "1702ECFF9CFF"), (T0 + 3, "1702ECFF9CFF0000"),
                     (T0 + 4, "1802ECFF9CFF0000")):
        source.on_frame(frame(0x356, data, ts=ts))
    assert [(u.timestamp, u.values["voltage"]) for u in out] == [
        (T0, 53.5), (T0 + 1, 53.5), (T0 + 3, 53.5), (T0 + 4, 53.6)]
    assert len(calls) == 2  # the first frame and the changed one; the short one is skipped
    status = source.status()
    assert (status["frames_decoded"], status["frames_malformed"]) == (4, 1)


def test_all_nul_identification_frames_emit_nothing() -> None:
    source, out = make_source()
    for frame_id, data in ((0x35E, bytes(8)), (0x370, bytes(8)), (0x371, bytes(8)),
                           (0x372, bytes(4)), (0x373, bytes(4))):
        source.on_frame(frame(frame_id, data))
    assert out == []
    assert source.status()["frames_decoded"] == 5


def test_negative_temperature_and_text_padding() -> None:
    source, out = make_source()
    source.on_frame(frame(0x356, "1702ECFF9CFF0000"))  # -2.0 A, -10.0 °C
    source.on_frame(frame(0x35E, b"AB\0\0\0\0\0\0"))
    assert [u.values for u in out] == [
        {"voltage": 53.5, "current": -2.0, "temperature": -10.0}, {"manufacturer": "AB"}]


# -- 0x35A --------------------------------------------------------------------------------


def test_steady_alarm_frame_reads_normal_and_unsupported_as_documented() -> None:
    source, out = make_source()
    source.on_frame(frame(0x35A, STEADY_35A))
    assert out == [Update(T0, STEADY_VALUES)]


@pytest.mark.parametrize(("name", "k"), FIELDS.items())
def test_each_alarm_field_turns_only_its_own_signal_true(name: str, k: int) -> None:
    source, out = make_source()
    source.on_frame(frame(0x35A, with_field(STEADY_35A, k, 1)))
    assert out == [Update(T0, {**STEADY_VALUES, name: True})]


@pytest.mark.parametrize("k", RESERVED)
def test_reserved_fields_are_never_emitted(k: int) -> None:
    source, out = make_source()
    for value in (1, 2):
        source.on_frame(frame(0x35A, with_field(STEADY_35A, k, value)))
    assert [u.values for u in out] == [STEADY_VALUES, STEADY_VALUES]


@pytest.mark.parametrize("value", [0, 3])
def test_unsupported_values_make_the_signal_absent(value: int) -> None:
    source, out = make_source()
    source.on_frame(frame(0x35A, with_field(STEADY_35A, FIELDS["alarm_high_voltage"], value)))
    expected = dict(STEADY_VALUES)
    del expected["alarm_high_voltage"]
    assert out == [Update(T0, expected)]


def test_field_order_is_lowest_bits_first_not_msb_first() -> None:
    # Byte 0 = 0xA7 = 10 10 01 11: read from the low bits, field 1 (high voltage) is 1.
    # Read from the top bits down, the 01 pair would be field 2: a low voltage alarm.
    data = bytes([0xA7]) + STEADY_35A[1:]
    assert data == with_field(STEADY_35A, FIELDS["alarm_high_voltage"], 1)
    source, out = make_source()
    source.on_frame(frame(0x35A, data))
    assert out[0].values["alarm_high_voltage"] is True
    assert out[0].values["alarm_low_voltage"] is False
    assert "alarm_general" not in out[0].values


# -- bad frames -----------------------------------------------------------------------------

BAD_FRAMES = [
    pytest.param(frame(0x351, "2F02040B040BB0"), id="0x351-short"),
    pytest.param(frame(0x35A, STEADY_35A + b"\xff"), id="0x35A-8-bytes"),
    pytest.param(frame(0x372, "0000010200000000"), id="0x372-8-bytes"),
    pytest.param(frame(0x351, "2F02040B040BB001", is_extended_id=True), id="extended"),
    pytest.param(frame(0x351, b"", is_remote_frame=True), id="remote"),
    pytest.param(frame(0x351, "2F02040B040BB001", is_remote_frame=True), id="remote-with-dlc"),
    pytest.param(frame(0x000, "0000000000000000", is_error_frame=True), id="error"),
    pytest.param(frame(0x355, "6500640000000000"), id="soc-101"),
    pytest.param(frame(0x355, "4800650000000000"), id="soh-101"),
    pytest.param(frame(0x356, "17020400E9030000"), id="temperature-100.1"),
    pytest.param(frame(0x356, "170204000BFE0000"), id="temperature-minus-50.1"),
]


@pytest.mark.parametrize("msg", BAD_FRAMES)
def test_bad_frames_are_counted_and_skipped_whole(msg: can.Message) -> None:
    source, out = make_source()
    source.on_frame(msg)
    assert out == []
    status = source.status()
    assert (status["frames_malformed"], status["frames_decoded"], status["state"]) == (
        1, 0, "waiting")


def test_range_edges_pass() -> None:
    source, out = make_source()
    source.on_frame(frame(0x356, "1702040084030000"))  # 90.0 °C
    source.on_frame(frame(0x356, "170204000CFE0000"))  # -50.0 °C
    source.on_frame(frame(0x355, "6400640000000000"))  # 100 %, 100 %
    assert [u.values for u in out] == [
        {"voltage": 53.5, "current": 0.4, "temperature": 90.0},
        {"voltage": 53.5, "current": 0.4, "temperature": -50.0},
        {"soc": 100, "soh": 100}]


def test_unknown_ids_are_counted_and_ignored() -> None:
    source, out = make_source()
    source.on_frame(frame(0x204, "0102"))
    source.on_frame(frame(0x305, bytes(8), is_extended_id=True))
    source.on_frame(frame(0x355, "4800640000000000"))
    assert out == [Update(T0, SOC)]
    status = source.status()
    assert (status["frames_unknown"], status["frames_malformed"], status["unknown_ids"]) == (
        2, 0, ["0x204", "0x305"])
    for frame_id in range(0x600, 0x614):  # a busy bus: the list stops at 16 IDs
        source.on_frame(frame(frame_id, "00"))
    status = source.status()
    assert (status["frames_unknown"], len(status["unknown_ids"])) == (22, 16)


GOOD_351 = "2F02040B040BB001"


@pytest.mark.parametrize(("message", "reason"), [
    (frame(0x351, GOOD_351, is_remote_frame=True), "frame 0x351 skipped: a remote frame"),
    (frame(0x351, GOOD_351, is_fd=True), "frame 0x351 skipped: a CAN FD frame"),
    (can.Message(timestamp=T0, arbitration_id=0x351, data=bytes.fromhex(GOOD_351)[:7], dlc=8,
                 is_extended_id=False, check=False),
     "frame 0x351 skipped: 7 data bytes (DLC 8), expected 8"),
    (frame(0x351, GOOD_351, is_extended_id=True),
     "frame 0x351 skipped: a 29-bit ID (the DBC has it as 11-bit)"),
    (frame(0x351, GOOD_351, is_error_frame=True), "error frame skipped: an error frame"),
])
def test_each_kind_of_malformed_frame_is_skipped_with_its_reason(
        message: can.Message, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="canbridge")
    source, out = make_source()
    source.on_frame(message)
    source.on_frame(frame(0x351, GOOD_351))  # the same ID, well formed, still counts
    assert caplog.messages == [f"under_test: {reason}"]
    assert (source.status()["frames_malformed"], len(out)) == (1, 1)


def test_bad_frames_are_logged_once_per_id_per_minute(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="canbridge")
    clock = Clock(virtual=True, start=T0)
    source, _ = make_source(clock)
    short_351 = "2F02040B040BB0"
    for at in (0.0, 1.0, 30.0):
        clock.advance_to(T0 + at)
        source.on_frame(frame(0x351, short_351, ts=T0 + at))
    source.on_frame(frame(0x355, "6500640000000000", ts=T0 + 30))
    clock.advance_to(T0 + 61)
    source.on_frame(frame(0x351, short_351, ts=T0 + 61))
    assert [r.getMessage() for r in caplog.records] == [
        "under_test: frame 0x351 skipped: 7 data bytes (DLC 7), expected 8",
        "under_test: frame 0x355 skipped: soc = 101 is outside the DBC range 0..100",
        "under_test: frame 0x351 skipped: 7 data bytes (DLC 7), expected 8"
        " (2 more since last report)",
    ]
    assert source.status()["frames_malformed"] == 5


# -- fuzzing ----------------------------------------------------------------------------------

KNOWN_IDS = sorted(m.frame_id for m in DB.messages)
SIGNALS = {s.name: s for m in DB.messages for s in m.signals}
TEXT_SIGNALS = {"manufacturer", "model", "firmware_version", "protocol_version"}


@st.composite
def any_frame(draw: st.DrawFn) -> can.Message:
    if draw(st.booleans()):  # a well-formed frame of the profile with any payload
        message = draw(st.sampled_from(DB.messages))
        return can.Message(timestamp=T0, arbitration_id=message.frame_id, is_extended_id=False,
                           data=draw(st.binary(min_size=message.length,
                                               max_size=message.length)))
    extended = draw(st.booleans())
    frame_id = draw(st.one_of(st.sampled_from(KNOWN_IDS),
                              st.integers(0, 0x1FFFFFFF if extended else 0x7FF)))
    data = draw(st.binary(min_size=0, max_size=8))
    kind = draw(st.sampled_from(["data", "data", "data", "remote", "error"]))
    return can.Message(timestamp=T0, arbitration_id=frame_id, is_extended_id=extended,
                       data=data, dlc=len(data), is_remote_frame=kind == "remote",
                       is_error_frame=kind == "error", check=False)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_frame(), min_size=1, max_size=20))
def test_any_frame_never_raises_and_never_emits_out_of_range(frames: list[can.Message]) -> None:
    source, out = make_source()
    for msg in frames:
        before = (len(out), source.frames_malformed, source.frames_unknown)
        source.on_frame(msg)
        emitted = out[before[0]:]
        if source.frames_malformed > before[1] or source.frames_unknown > before[2]:
            assert emitted == []
        for update in emitted:
            assert update.timestamp == msg.timestamp
            for name, value in update.values.items():
                if isinstance(value, bool):
                    assert name in FIELDS
                elif name == "alarm_report":
                    assert value == "received"
                    assert msg.arbitration_id == 0x35A
                elif isinstance(value, str):
                    assert name in TEXT_SIGNALS
                else:
                    assert SIGNALS[name].minimum <= value <= SIGNALS[name].maximum, (name, value)
    status = source.status()
    assert status["frames_in"] == len(frames) == (
        status["frames_decoded"] + status["frames_malformed"] + status["frames_unknown"])


# -- end to end -------------------------------------------------------------------------------


def test_pipeline_replays_the_capture_through_the_glitch_filter(tmp_path: Path) -> None:
    # One spurious 46.3 V sample (CF 01) in place of the 53.5 V one at 1745512158.004.
    capture_text = SAMPLE.read_text().replace(
        "(1745512158.004000) can0 356#1702030018010000",
        "(1745512158.004000) can0 356#CF01030018010000")
    assert "356#CF01" in capture_text
    (tmp_path / "capture.log").write_text(capture_text)
    status_file = tmp_path / "status.json"
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(f"""
[buses.battery]
interface = "replay"
path = "capture.log"
speed = "max"

[sources.lynk]
type = "discover-lynk2"
bus = "battery"

[transforms.glitch]
type = "glitch-filter"
inputs = ["lynk"]
signal = "voltage"
below = 48.0
samples = 3

[status]
file = "{status_file}"
""")
    result = run_canbridge("run", str(pipeline))
    assert result.returncode == 0, result.stderr
    doc = json.loads(status_file.read_text())
    lynk, glitch = doc["components"]["lynk"], doc["components"]["glitch"]
    assert doc["state"] == "stopped"
    assert (lynk["frames_in"], lynk["frames_decoded"], lynk["frames_unknown"],
            lynk["frames_malformed"]) == (71, 50, 21, 0)
    assert (glitch["replaced"], glitch["dropped"], glitch["sustained"]) == (1, 0, 0)
