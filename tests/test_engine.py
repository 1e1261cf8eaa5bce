"""The engine: wiring, shared buses, records, replay in virtual time, forwards, failures."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import can
import pytest
import support_plugins
from conftest import wait_until, write_capture

from canbridge import buses
from canbridge import engine as engine_module
from canbridge.clock import Clock
from canbridge.config import PipelineConfig, load_pipeline
from canbridge.engine import Engine, Forward
from canbridge.registry import load_registry
from canbridge.signals import Update
from canbridge.testing import build, capture, feed

T0 = 1745512155.0


def load(tmp_path: Path, text: str) -> PipelineConfig:
    path = tmp_path / "pipeline.toml"
    path.write_text(text + f'\n[status]\nfile = "{tmp_path / "status.json"}"\n')
    return load_pipeline(path, load_registry((support_plugins,)))


def run(tmp_path: Path, text: str, **kwargs: object) -> Engine:
    engine = Engine(load(tmp_path, text), **kwargs)  # type: ignore[arg-type]
    assert engine.run() == 0
    return engine


def replay(path: Path, speed: str = '"max"') -> str:
    return f'[buses.battery]\ninterface = "replay"\npath = "{path}"\nspeed = {speed}\n'


FRAMES = '[sources.frames]\ntype = "test-frames"\nbus = "battery"\n'
"""The frames of the battery bus as updates: the source of most pipelines here."""
TICKS = '[sources.tick]\ntype = "test-ticker"\nperiod = 1.0\n'
"""An update {"tick": n} every second of pipeline time."""


def test_a_one_hour_capture_fires_a_one_second_timer_exactly_3600_times(tmp_path: Path) -> None:
    capture = write_capture(tmp_path / "hour.log",
                            ((T0 + s, 0x351, b"\x01") for s in range(3601)))
    started = time.monotonic()
    engine = run(tmp_path, replay(capture) + FRAMES + TICKS + """
[sinks.ticks]
type = "test-collect"
inputs = ["tick", "frames"]
""")
    ticker = engine.components["tick"]
    assert ticker.ticks == 3600
    ticks = [u for u in engine.components["ticks"].received if "tick" in u.values]
    assert [u.timestamp for u in ticks] == [T0 + s for s in range(1, 3601)]
    assert engine.clock.now() == T0 + 3600
    # Virtual time: an hour of capture must not take an hour (or anything close).
    assert time.monotonic() - started < 30


def test_updates_flow_through_transforms_in_order(tmp_path: Path) -> None:
    capture = write_capture(tmp_path / "c.log", [(T0, 0x10, b"\x01"), (T0 + 0.5, 0x11, b"\x02"),
                                                 (T0 + 1, 0x12, b"\x03")])
    engine = run(tmp_path, replay(capture) + FRAMES + """
[transforms.first]
type = "test-tag"
inputs = ["frames"]

[transforms.second]
type = "test-tag"
inputs = ["first"]

[sinks.out]
type = "test-collect"
inputs = ["second", "frames"]
""")
    received = engine.components["out"].received
    assert [(u.timestamp, u.values.get("frame_id"), u.values.get("path")) for u in received] == [
        (T0, 0x10, "/first/second"), (T0, 0x10, None),
        (T0 + 0.5, 0x11, "/first/second"), (T0 + 0.5, 0x11, None),
        (T0 + 1, 0x12, "/first/second"), (T0 + 1, 0x12, None),
    ]
    assert engine.components["out"].stopped


def test_components_share_one_bus_and_records_are_readable(tmp_path: Path, channel: str) -> None:
    capture = write_capture(tmp_path / "c.log", [(T0 + i, 0x20 + i, bytes([i])) for i in range(5)])
    engine = run(tmp_path, replay(capture) + f"""
record = "{tmp_path / 'battery.log'}"

[buses.inverter]
interface = "virtual"
channel = "{channel}"
record = "{tmp_path / 'inverter.log'}"

[sources.a]
type = "test-frames"
bus = "battery"

[sources.b]
type = "test-frames"
bus = "battery"

[sinks.to_inverter]
type = "test-send"
inputs = ["a"]
bus = "inverter"

[sinks.to_battery]
type = "test-send"
inputs = ["b"]
bus = "battery"
""")
    assert engine.components["to_inverter"].count == 5
    assert engine.components["to_battery"].count == 5
    inverter = list(can.LogReader(str(tmp_path / "inverter.log")))
    # Sent frames carry the pipeline clock: the capture's own time in a full-speed replay.
    assert [(m.timestamp, m.arbitration_id, bytes(m.data)) for m in inverter] == [
        (T0 + i, 0x120 + i, bytes([i + 1])) for i in range(5)]
    battery = list(can.LogReader(str(tmp_path / "battery.log")))
    assert [(m.arbitration_id, m.is_rx) for m in battery] == [
        pair for i in range(5) for pair in ((0x20 + i, True), (0x120 + i, False))]


@pytest.mark.parametrize(("lists", "expected"), [
    ("ids = [0x305]\nextended_ids = [0x1ABCDEF0]",
     [(0x305, False), (0x1ABCDEF0, True)]),
    ("ids = [0x305]\nextended_ids = [0x305, 0x1ABCDEF0]",
     [(0x305, False), (0x305, True), (0x1ABCDEF0, True)]),
    ("extended_ids = [0x305]", [(0x305, True)]),
], ids=["11-bit rule", "both widths", "29-bit rule (Schneider)"])
def test_forwards_copy_only_the_listed_ids_in_their_width(tmp_path: Path, channel: str,
                                                          lists: str, expected: list) -> None:
    """The ID width is part of the ID: each frame is matched and copied as it was received."""
    capture = tmp_path / "c.log"
    writer = can.io.CanutilsLogWriter(str(capture))
    for ts, frame_id, extended in [(T0, 0x305, False), (T0 + 0.1, 0x300, False),
                                   (T0 + 0.2, 0x305, True), (T0 + 0.3, 0x351, False),
                                   (T0 + 0.4, 0x1ABCDEF0, True)]:
        writer.on_message_received(can.Message(timestamp=ts, arbitration_id=frame_id,
                                               is_extended_id=extended, data=b"\x00" * 8))
    writer.stop()
    listener = can.Bus(interface="virtual", channel=channel)
    try:
        run(tmp_path, replay(capture) + f"""
[buses.inverter]
interface = "virtual"
channel = "{channel}"

[forwards.keepalive]
from_bus = "battery"
to_bus = "inverter"
{lists}
""")
        got = []
        while (msg := listener.recv(timeout=0.2)) is not None:
            got.append((msg.arbitration_id, msg.is_extended_id))
            assert bytes(msg.data) == b"\x00" * 8
    finally:
        listener.shutdown()
    assert got == expected


def test_a_failing_bus_does_not_stop_the_others(tmp_path: Path, channel: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(can.interfaces.BACKENDS, "test-broken", ("support_plugins", "BrokenBus"))
    capture = write_capture(tmp_path / "c.log", [(T0 + i, 0x20, b"\x01") for i in range(10)])
    engine = run(tmp_path, replay(capture) + f"""
[buses.bad]
interface = "test-broken"

[buses.good]
interface = "virtual"
channel = "{channel}"
record = "{tmp_path / 'good.log'}"

[sources.frames]
type = "test-frames"
bus = "battery"

[sinks.bad]
type = "test-send"
inputs = ["frames"]
bus = "bad"

[sinks.good]
type = "test-send"
inputs = ["frames"]
bus = "good"
""")
    bad = engine.buses["bad"]
    assert bad.send_errors == 10
    assert bad.frames_out == 0
    assert engine.buses["good"].frames_out == 10
    assert len(list(can.LogReader(str(tmp_path / "good.log")))) == 10


def test_a_component_that_raises_is_counted_and_the_pipeline_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frames = [(T0 + i * 0.1, 0x666 if i % 2 else 0x10, b"\x01") for i in range(6)]
    capture = write_capture(tmp_path / "c.log", frames)
    engine = run(tmp_path, replay(capture) + FRAMES + """
[sinks.out]
type = "test-collect"
inputs = ["frames"]
""")
    assert len(engine.components["out"].received) == 3
    assert engine.components["frames"].errors == 3
    assert engine.errors == 3
    failures = [r.getMessage() for r in caplog.records if "failed in on_frame" in r.getMessage()]
    # Repetitive errors are rate limited: one line, not one per frame.
    assert failures == ["component frames failed in on_frame: ValueError: frame 0x666 is cursed"]
    # Failing lately: the status says so (and `canbridge status` exits 1) with the cause.
    assert engine.health()["frames"] == {"kind": "source", "type": "test-frames",
                                         "state": "error", "errors": 3,
                                         "last_error": "on_frame: ValueError: frame 0x666 is "
                                                       "cursed"}


def test_a_timer_that_raises_is_counted_against_its_component(tmp_path: Path) -> None:
    capture = write_capture(tmp_path / "c.log", [(T0, 0x10, b"\x01"), (T0 + 10, 0x10, b"\x01")])
    engine = run(tmp_path, replay(capture) + FRAMES + TICKS + """fail_every = 3
[sinks.out]
type = "test-collect"
inputs = ["tick"]
""")
    assert [u.values["tick"] for u in engine.components["out"].received] == [1, 2, 4, 5, 7, 8, 10]
    assert (engine.components["tick"].errors, engine.errors) == (3, 3)
    assert engine.health()["tick"]["last_error"] == "a timer: RuntimeError: tick 9 is cursed"


def test_dry_run_transmits_nothing(tmp_path: Path, channel: str) -> None:
    capture = write_capture(tmp_path / "c.log", [(T0 + i, 0x20, b"\x01") for i in range(3)])
    listener = can.Bus(interface="virtual", channel=channel)
    try:
        engine = run(tmp_path, replay(capture) + f"""
[buses.inverter]
interface = "virtual"
channel = "{channel}"

[sources.frames]
type = "test-frames"
bus = "battery"

[sinks.out]
type = "test-send"
inputs = ["frames"]
bus = "inverter"
""", dry_run=True)
        assert listener.recv(timeout=0.3) is None
    finally:
        listener.shutdown()
    assert engine.components["out"].count == 3
    assert engine.buses["inverter"].frames_suppressed == 3
    assert engine.buses["inverter"].frames_out == 0


def test_duration_is_pipeline_time_in_a_full_speed_replay(tmp_path: Path) -> None:
    capture = write_capture(tmp_path / "c.log", [(T0 + i, 0x20, b"\x01") for i in range(100)])
    engine = run(tmp_path, replay(capture) + """
[sources.tick]
type = "test-ticker"

[sinks.out]
type = "test-collect"
inputs = ["tick"]
""", duration=10.0)
    assert engine.components["tick"].ticks == 10
    assert engine.clock.now() == T0 + 10


def test_a_looping_replay_moves_time_on_each_pass(tmp_path: Path) -> None:
    capture = write_capture(tmp_path / "c.log", [(T0, 0x20, b"\x01"), (T0 + 2, 0x21, b"\x02")])
    engine = run(tmp_path, replay(capture) + """loop = true

[sources.frames]
type = "test-frames"
bus = "battery"

[sinks.out]
type = "test-collect"
inputs = ["frames"]
""", duration=9.0)
    times = [u.timestamp - T0 for u in engine.components["out"].received]
    # Each pass starts one second after the previous pass's last frame.
    assert times == [0, 2, 3, 5, 6, 8, 9]


def test_status_document_reports_components_and_buses(tmp_path: Path) -> None:
    capture = write_capture(tmp_path / "c.log", [(T0 + i, 0x20, b"\x01") for i in range(3)])
    engine = run(tmp_path, replay(capture) + FRAMES + """
[sinks.out]
type = "test-collect"
inputs = ["frames"]
""")
    doc = engine.status_document("stopped")
    assert doc["state"] == "stopped"
    assert doc["clock"] == "replay"
    assert doc["engine"] == {"frames": 3, "updates": 3, "errors": 0, "frames_dropped": 0,
                             "forwards_dropped": 0}
    assert doc["buses"]["battery"]["frames_in"] == 3
    assert doc["buses"]["battery"]["finished"] is True
    assert doc["components"]["out"]["type"] == "test-collect"
    assert (tmp_path / "status.json").exists()


def test_a_paced_replay_keeps_the_captures_spacing_over_its_speed_and_ends_the_run(
        tmp_path: Path) -> None:
    frames = [(T0 + n * 0.1, 0x351 + n, bytes([n])) for n in range(5)]
    capture = write_capture(tmp_path / "c.log", frames)
    started = time.monotonic()
    engine = run(tmp_path, replay(capture, speed="10.0") + FRAMES
                 + '[sinks.seen]\ntype = "test-collect"\ninputs = ["frames"]\n')
    # 0.4 s of capture at speed 10: never sooner than 0.04 s; the upper bound is loose (a
    # busy machine) but far below the 4 s that speed taken the wrong way round would take
    assert 0.04 <= time.monotonic() - started < 2.0
    received = engine.components["seen"].received
    assert [u.values["frame_id"] for u in received] == [0x351 + n for n in range(5)]
    assert engine.buses["battery"].status()["finished"] is True


def test_a_paced_replay_that_breaks_mid_run_ends_it_with_exit_2(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    capture = tmp_path / "cut.log"
    capture.write_text("".join(f"({T0 + n * 0.001:.6f}) can0 351#{n:02X}\n" for n in range(25))
                       + "(garbage) can0 XYZ#ZZ\n")
    engine = Engine(load(tmp_path, replay(capture, speed="1.0") + FRAMES
                         + '[sinks.seen]\ntype = "test-collect"\ninputs = ["frames"]\n'))
    assert engine.run() == engine_module.EXIT_BAD_FILE
    assert len(engine.components["seen"].received) == 25  # what came before the break
    assert f"{capture}: not a readable capture after frame 25" in caplog.messages[-1]


def test_two_full_speed_replays_merge_in_time_order_each_on_its_own_bus(tmp_path: Path) -> None:
    a = write_capture(tmp_path / "a.log", [(T0 + 0, 0x10, b"\x01"), (T0 + 2, 0x10, b"\x02")])
    b = write_capture(tmp_path / "b.log", [(T0 + 1, 0x20, b"\x03"), (T0 + 3, 0x20, b"\x04")])
    engine = run(tmp_path, f"""
[buses.one]
interface = "replay"
path = "{a}"
speed = "max"

[buses.two]
interface = "replay"
path = "{b}"
speed = "max"

[sources.from_one]
type = "test-frames"
bus = "one"

[sources.from_two]
type = "test-frames"
bus = "two"

[transforms.tag_one]
type = "test-tag"
inputs = ["from_one"]

[sinks.out]
type = "test-collect"
inputs = ["tag_one", "from_two"]
""")
    assert [(u.timestamp - T0, u.values["frame_id"], u.values.get("path"))
            for u in engine.components["out"].received] == [
        (0, 0x10, "/tag_one"), (1, 0x20, None), (2, 0x10, "/tag_one"), (3, 0x20, None)]


def test_a_record_file_that_cannot_be_written_does_not_stop_the_bridge(
        tmp_path: Path, channel: str, caplog: pytest.LogCaptureFixture) -> None:
    capture = write_capture(tmp_path / "c.log", [(T0 + i, 0x20, b"\x01") for i in range(3)])
    listener = can.Bus(interface="virtual", channel=channel)
    try:
        engine = run(tmp_path, replay(capture) + f"""
[buses.inverter]
interface = "virtual"
channel = "{channel}"
record = "/dev/full"

[sources.frames]
type = "test-frames"
bus = "battery"

[sinks.out]
type = "test-send"
inputs = ["frames"]
bus = "inverter"
""")
        received = [listener.recv(timeout=1) for _ in range(3)]
    finally:
        listener.shutdown()
    # Every frame still went out; the disk problem is counted and said once.
    assert [m.arbitration_id for m in received if m is not None] == [0x120] * 3
    assert engine.buses["inverter"].record_errors >= 1
    said = [r.getMessage() for r in caplog.records if "record file" in r.getMessage()]
    assert said == ["bus inverter: cannot write the record file /dev/full: "
                    "No space left on device"]


def test_post_runs_a_function_on_the_engine_thread(tmp_path: Path, channel: str) -> None:
    """Commands from other threads (MQTT) reach components only through the engine thread."""
    import threading

    from canbridge.config import load_pipeline
    from canbridge.engine import Engine
    from canbridge.registry import load_registry

    path = tmp_path / "p.toml"
    path.write_text(f'[buses.b]\ninterface = "virtual"\nchannel = "{channel}"\n'
                    f'[status]\nfile = "{tmp_path / "s.json"}"\n')
    engine = Engine(load_pipeline(path, load_registry()), duration=600.0)
    ran: list[str] = []

    def from_outside() -> None:
        engine.post(lambda: ran.append(threading.current_thread().name))
        engine.post(engine.request_stop)

    runner = threading.Thread(target=engine.run, name="engine", daemon=True)
    runner.start()
    threading.Thread(target=from_outside).start()
    runner.join(10)
    assert ran == ["engine"]
    assert not runner.is_alive()  # ended by the posted request_stop, not by its duration


def frames_seen_live(channel: str) -> str:
    """A live virtual battery bus, its frames as updates, and a sink `seen` keeping them."""
    return (f'[buses.battery]\ninterface = "virtual"\nchannel = "{channel}"\n' + FRAMES
            + '[sinks.seen]\ntype = "test-collect"\ninputs = ["frames"]\n')


@contextlib.contextmanager
def running_live(tmp_path: Path, text: str, channel: str) -> Iterator[tuple[Engine, can.BusABC]]:
    """The pipeline (`frames_seen_live`'s) running on its own thread, started, and a peer on
    `channel` to send it frames; both stopped afterwards."""
    engine = Engine(load(tmp_path, text), duration=600.0)
    runner = threading.Thread(target=engine.run, name="engine", daemon=True)
    runner.start()
    peer = can.Bus(interface="virtual", channel=channel)
    try:
        wait_until(lambda: hasattr(engine.components.get("seen"), "received"))  # started
        yield engine, peer
    finally:
        peer.shutdown()
        engine.request_stop()
        runner.join(5)


def test_a_live_frame_carries_pipeline_time_whatever_its_driver_stamped(
        tmp_path: Path, channel: str) -> None:
    """Freshness (and with it the inverter's safe state) is judged on the pipeline clock: a
    live frame is stamped with it on arrival, not left with the driver's time."""
    with running_live(tmp_path, frames_seen_live(channel), channel) as (engine, peer):
        before = time.monotonic()
        peer.send(can.Message(arbitration_id=0x351, data=[7], timestamp=12345.0))
        received = engine.components["seen"].received
        wait_until(lambda: bool(received))
        assert before <= received[0].timestamp <= time.monotonic()


def test_components_with_the_same_inputs_share_one_view_the_core_keeps(tmp_path: Path) -> None:
    capture = write_capture(tmp_path / "frames.log",
                            ((T0 + s, 0x351 + s % 3, bytes([s])) for s in range(30)))
    engine = run(tmp_path, replay(capture) + FRAMES + """
[sinks.viewer]
type = "test-view"
inputs = ["frames"]

[sinks.reader]
type = "test-read"
inputs = ["frames"]
""")
    viewer, reader = engine.components["viewer"], engine.components["reader"]
    assert viewer.latest is reader.latest  # one view, applied once per update
    assert viewer.had_it == [True] * 30  # applied before any on_update
    assert reader.last == {"frame_id": 0x351 + 29 % 3, "byte0": 29}
    assert reader.latest.updated_at("byte0") == T0 + 29


def test_an_update_without_the_names_a_component_reads_passes_it_by(tmp_path: Path) -> None:
    capture = write_capture(tmp_path / "c.log", [(T0 + s / 2, 0x351, bytes([s])) for s in range(7)])
    engine = run(tmp_path, replay(capture) + FRAMES + TICKS + """
[transforms.tag]
type = "test-tag"
inputs = ["frames", "tick"]
reads = ["tick"]

[sinks.out]
type = "test-collect"
inputs = ["tag"]

[sinks.ticks]
type = "test-collect"
inputs = ["tag"]
reads = ["tick"]

[sinks.viewer]
type = "test-read"
inputs = ["tag"]
""")
    tag, out, ticks = (engine.components[n] for n in ("tag", "out", "ticks"))
    # The transform ran for its ticks only; every frame update went by it unchanged, in order.
    assert tag.seen == 3
    assert [(u.timestamp, u.values.get("byte0"), u.values.get("tick"), u.values.get("path"))
            for u in out.received] == [
        (T0, 0, None, None), (T0 + 0.5, 1, None, None),
        (T0 + 1, None, 1, "/tag"), (T0 + 1, 2, None, None), (T0 + 1.5, 3, None, None),
        (T0 + 2, None, 2, "/tag"), (T0 + 2, 4, None, None), (T0 + 2.5, 5, None, None),
        (T0 + 3, None, 3, "/tag"), (T0 + 3, 6, None, None)]
    # A sink is not handed what it does not read; the view of the transform's output has all.
    assert [u.values["tick"] for u in ticks.received] == [1, 2, 3]
    assert engine.components["viewer"].last == {"frame_id": 0x351, "byte0": 6, "tick": 3,
                                                 "path": "/tag"}
    assert engine.updates == 7 + 3 + 7 + 3  # each layer's emits, passed-by ones included


def test_testing_feed_passes_an_update_by_as_the_engine_does() -> None:
    tag = build(support_plugins.Tag, {"inputs": ["frames"], "reads": ["tick"]})
    sink = build(support_plugins.Collect, {"inputs": ["tag"], "reads": ["tick"]})
    out = capture(tag)
    frame, tick = Update(T0, {"byte0": 1}), Update(T0, {"tick": 1})
    for update in (frame, tick):
        feed(tag, update)
        feed(sink, update)
    assert out[0] is frame and out[1].values == {"tick": 1, "path": "/under_test"}
    assert tag.seen == 1
    assert sink.received == [tick]
    assert sink.context.latest.snapshot() == {"byte0": 1, "tick": 1}  # its view has both


def test_a_full_speed_replay_records_every_frame_however_fast_it_went(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record file's thread may lag behind a replay at full speed (here: its file is a
    pipe read slowly); the stop waits for it there, as no inverter is waiting, so the run
    ends with the record whole and closed."""
    monkeypatch.setattr(buses, "RECORD_CLOSE_SECS", 0.0)  # a live stop would not wait at all
    frames = [(T0 + n * 0.001, 0x100 + n % 7, n.to_bytes(4, "little")) for n in range(20_000)]
    capture = write_capture(tmp_path / "c.log", frames)
    record = tmp_path / "record.log"
    os.mkfifo(record)
    chunks: list[tuple[bool, bytes]] = []  # (the run had ended, what was read)
    ended = threading.Event()

    def slow_reader() -> None:
        with record.open("rb") as pipe:
            while chunk := pipe.read1(4096):
                chunks.append((ended.is_set(), chunk))
                time.sleep(0.005)

    reader = threading.Thread(target=slow_reader)
    reader.start()
    run(tmp_path, replay(capture) + f'record = "{record}"\n' + FRAMES)
    ended.set()
    reader.join(30)
    after = sum(len(chunk) for was_ended, chunk in chunks if was_ended)
    assert after <= 2 * 65536  # at most what the pipe held when the run ended
    recorded = list(can.io.CanutilsLogReader(io.StringIO(
        b"".join(chunk for _, chunk in chunks).decode())))
    assert [(m.timestamp, m.arbitration_id, bytes(m.data)) for m in recorded] == [
        (pytest.approx(ts), frame_id, data) for ts, frame_id, data in frames]


def test_a_live_record_is_stamped_with_unix_time(tmp_path: Path, channel: str) -> None:
    """A record is read beside other logs: live, its frames carry wall-clock time, not the
    pipeline's monotonic clock."""
    record = tmp_path / "battery.log"
    text = frames_seen_live(channel).replace(f'channel = "{channel}"\n',
                                            f'channel = "{channel}"\nrecord = "{record}"\n')
    with running_live(tmp_path, text, channel) as (engine, peer):
        before = time.time()
        peer.send(can.Message(arbitration_id=0x351, data=[7]))
        wait_until(lambda: bool(engine.components["seen"].received))
        after = time.time()
    (recorded,) = can.LogReader(str(record))
    assert (recorded.arbitration_id, bytes(recorded.data)) == (0x351, b"\x07")
    assert before <= recorded.timestamp <= after


def test_a_frame_finding_the_queue_full_is_dropped_counted_and_told_once(
        tmp_path: Path, channel: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(engine_module, "QUEUE_LIMIT", 3)
    engine = Engine(load(tmp_path, frames_seen_live(channel)))
    engine._build()  # the buses and components, none of them opened or started
    bus = engine.buses["battery"]
    for i in range(5):
        engine._deliver(bus, can.Message(arbitration_id=0x351, data=[i]))
    assert (engine._queue.qsize(), engine.frames_dropped) == (3, 2)
    kept = [engine._queue.get_nowait()[1].data[0] for _ in range(3)]
    assert kept == [0, 1, 2]  # what waits is older and in order: the newest go
    assert [r.getMessage() for r in caplog.records if "engine behind" in r.getMessage()] == [
        "engine behind (3 frames waiting, a flood on bus battery?): dropping new frames; "
        "1 dropped so far"]


def test_a_flood_waiting_live_lets_the_timers_run_between_its_batches(
        tmp_path: Path, channel: str) -> None:
    """600 frames wait at once; each costs 10 ms of (injected) time. The 1 s timers may not
    wait for the queue to empty: they run after each BATCH (the 256th item is the call that
    queued the flood), so the inverter's bursts keep their cadence through a flood. (Live, a
    period that fell due twice in one wait fires once.)"""
    engine = Engine(load(tmp_path, frames_seen_live(channel) + TICKS
                         + '[sinks.ticks]\ntype = "test-collect"\ninputs = ["tick"]\n'))
    engine.clock = Clock(real_time=lambda: 100.0 + engine.frames * 0.01)

    def flood() -> None:
        for i in range(600):
            engine._deliver(engine.buses["battery"], can.Message(arbitration_id=0x351,
                                                                 data=[i % 256]))
        engine.post(engine.request_stop)

    engine.post(flood)
    assert engine.run() == 0
    assert engine.frames == 600
    assert [u.timestamp for u in engine.components["ticks"].received] == pytest.approx(
        [102.55, 105.11, 106.0])


def test_a_forward_passes_a_seconds_worth_at_once_then_as_its_rate_refills() -> None:
    forward = Forward(frozenset({(0x305, False)}), None, max_per_sec=2.0)
    allowed = [forward.allow(now) for now in (0.0, 0.0, 0.0, 0.5, 0.5, 10.0, 10.0, 10.0)]
    assert allowed == [True, True, False, True, False, True, True, False]
    assert forward.dropped == 3
