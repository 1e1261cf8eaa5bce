"""The datalog sink: rows per interval on the pipeline clock, daily files, pruning, failures."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from canbridge_plugins import datalog
from canbridge_plugins.datalog import DEFAULT_SIGNALS, DataLog
from conftest import SAMPLE, canbridge_cmd, run_canbridge, subprocess_env, write_capture

from canbridge import Clock, Update
from canbridge.dayfiles import day_file, day_of
from canbridge.testing import build, feed, run_timers

CEST = timezone(timedelta(hours=2))


@pytest.fixture(autouse=True)
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is Central European (POSIX rule, no tzdata needed)."""
    monkeypatch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def at(text: str) -> float:
    """Unix time of a local (CEST) wall-clock time on 2025-04-24 or later."""
    return datetime.fromisoformat(text).replace(tzinfo=CEST).timestamp()


def make(tmp_path: Path, start: str, **options: object) -> tuple[DataLog, Clock]:
    # A replay clock: pipeline time is Unix time, as in a full-speed replay.
    clock = Clock(virtual=True, start=at(start))
    sink = build(DataLog, {"inputs": ["lynk"], "path": str(tmp_path / "logs" / "battery.csv"),
                           **options}, clock=clock)
    return sink, clock


def advance(sink: DataLog, clock: Clock, seconds: float,
            updates: dict[float, dict[str, object]] | None = None) -> None:
    """Move the clock on by `seconds`, delivering `updates` at their offsets on the way."""
    base = clock.now()
    for offset, values in sorted((updates or {}).items()):
        run_timers(clock, base + offset)
        feed(sink, Update(base + offset, values))
    run_timers(clock, base + seconds)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_day_file_names() -> None:
    path = Path("/var/log/canbridge/battery.csv")
    assert day_file(path, date(2025, 4, 24)) == Path("/var/log/canbridge/battery-2025-04-24.csv")
    assert day_file(path, date(2025, 4, 24), 1) == Path(
        "/var/log/canbridge/battery-2025-04-24.1.csv")
    assert day_of(path, "battery-2025-04-24.csv") == date(2025, 4, 24)
    assert day_of(path, "battery-2025-04-24.3.csv") == date(2025, 4, 24)
    for other in ("battery.csv", "battery-2025-04-24.jsonl", "other-2025-04-24.csv",
                  "battery-2025-13-01.csv", "xbattery-2025-04-24.csv", "battery-2025-04-24.csv~"):
        assert day_of(path, other) is None, other


def test_csv_rows_every_interval_with_the_latest_values(tmp_path: Path) -> None:
    sink, clock = make(tmp_path, "2025-04-24T12:00:00",
                       signals=["soc", "voltage", "current", "balancing_active"])
    advance(sink, clock, 150, {
        10: {"soc": 95.5, "voltage": 53.1, "current": -12.25},
        20: {"balancing_active": False},
        70: {"soc": 95.4, "voltage": 53.000000001, "balancing_active": True},
        130: {"current": 3.0},
    })
    sink.stop()
    text = (tmp_path / "logs" / "battery-2025-04-24.csv").read_text()
    assert text == (
        "time,soc,voltage,current,balancing_active\n"
        "2025-04-24T12:01:00+02:00,95.5,53.1,-12.25,0\n"
        "2025-04-24T12:02:00+02:00,95.4,53.0,-12.25,1\n"
    )
    status = sink.status()
    assert status["state"] == "ok" and status["rows"] == 2 and status["errors"] == 0
    assert status["file"] == str(tmp_path / "logs" / "battery-2025-04-24.csv")
    assert status["last_row_age"] == 30.0 and status["last_seen_age"] == 20.0


def test_default_signals_make_the_header(tmp_path: Path) -> None:
    sink, clock = make(tmp_path, "2025-04-24T12:00:00", every_secs=30)
    advance(sink, clock, 30, {1: {"soc": 50.0, "warning_general": True}})
    sink.stop()
    lines = (tmp_path / "logs" / "battery-2025-04-24.csv").read_text().splitlines()
    assert lines == ["time," + ",".join(DEFAULT_SIGNALS),
                     "2025-04-24T12:00:30+02:00,50.0" + "," * (len(DEFAULT_SIGNALS) - 1)]


def test_nothing_is_written_before_the_first_update(tmp_path: Path) -> None:
    sink, clock = make(tmp_path, "2025-04-24T12:00:00", signals=["soc"])
    advance(sink, clock, 600)
    assert sink.status()["state"] == "waiting"
    sink.stop()
    assert not (tmp_path / "logs").exists()
    assert sink.status()["rows"] == 0


def test_missing_and_stale_signals_are_empty_cells(tmp_path: Path) -> None:
    sink, clock = make(tmp_path, "2025-04-24T12:00:00", signals=["soc", "voltage", "temperature"],
                       stale_after_secs=100)
    advance(sink, clock, 240, {1: {"soc": 80.0, "temperature": 21.5},
                               150: {"temperature": 22.0}})
    sink.stop()
    assert (tmp_path / "logs" / "battery-2025-04-24.csv").read_text().splitlines() == [
        "time,soc,voltage,temperature",
        "2025-04-24T12:01:00+02:00,80.0,,21.5",
        "2025-04-24T12:02:00+02:00,,,",       # 119 s old: stale, not a flat line
        "2025-04-24T12:03:00+02:00,,,22.0",
        "2025-04-24T12:04:00+02:00,,,22.0",
    ]


def test_stale_after_zero_keeps_the_last_value(tmp_path: Path) -> None:
    sink, clock = make(tmp_path, "2025-04-24T12:00:00", signals=["soc"], stale_after_secs=0,
                       every_secs=3600)
    advance(sink, clock, 7200, {1: {"soc": 80.0}})
    sink.stop()
    assert (tmp_path / "logs" / "battery-2025-04-24.csv").read_text().splitlines()[1:] == [
        "2025-04-24T13:00:00+02:00,80.0", "2025-04-24T14:00:00+02:00,80.0"]


def test_jsonl_rows(tmp_path: Path) -> None:
    sink, clock = make(tmp_path, "2025-04-24T12:00:00", format="jsonl",
                       path=str(tmp_path / "logs" / "battery.jsonl"),
                       signals=["soc", "balancing_active", "manufacturer"])
    advance(sink, clock, 60, {5: {"soc": 99.0, "balancing_active": True, "manufacturer": 'D"A'}})
    sink.stop()
    lines = (tmp_path / "logs" / "battery-2025-04-24.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"time": "2025-04-24T12:01:00+02:00", "soc": 99.0, "balancing_active": True,
         "manufacturer": 'D"A'}]


def test_csv_quotes_text_values(tmp_path: Path) -> None:
    sink, clock = make(tmp_path, "2025-04-24T12:00:00", signals=["model", "soc"])
    advance(sink, clock, 60, {5: {"model": 'Helios, "48V"', "soc": 7}})
    sink.stop()
    assert (tmp_path / "logs" / "battery-2025-04-24.csv").read_text().splitlines()[1] == (
        '2025-04-24T12:01:00+02:00,"Helios, ""48V""",7')


def test_a_new_file_with_a_header_at_local_midnight(tmp_path: Path) -> None:
    sink, clock = make(tmp_path, "2025-04-24T23:58:30", signals=["soc"])
    advance(sink, clock, 180, {1: {"soc": 60.0}, 100: {"soc": 59.5}})
    sink.stop()
    logs = tmp_path / "logs"
    assert (logs / "battery-2025-04-24.csv").read_text() == (
        "time,soc\n2025-04-24T23:59:30+02:00,60.0\n")
    assert (logs / "battery-2025-04-25.csv").read_text() == (
        "time,soc\n2025-04-25T00:00:30+02:00,59.5\n2025-04-25T00:01:30+02:00,59.5\n")


def test_old_files_of_its_own_pattern_are_deleted(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    names = ["battery-2025-04-20.csv", "battery-2025-04-21.csv", "battery-2025-04-21.1.csv",
             "battery-2025-04-22.csv", "battery-2025-04-23.csv", "battery.csv",
             "battery-2025-04-01.jsonl", "other-2025-04-01.csv", "notes.txt"]
    for name in names:
        (logs / name).write_text("old\n")
    caplog.set_level(logging.INFO)
    sink, clock = make(tmp_path, "2025-04-24T12:00:00", signals=["soc"], keep_days=3)
    advance(sink, clock, 60, {1: {"soc": 1.0}})
    sink.stop()
    assert sorted(p.name for p in logs.iterdir()) == [
        "battery-2025-04-01.jsonl", "battery-2025-04-22.csv", "battery-2025-04-23.csv",
        "battery-2025-04-24.csv", "battery.csv", "notes.txt", "other-2025-04-01.csv"]
    assert f"deleted {logs / 'battery-2025-04-20.csv'}" in caplog.messages


def test_a_clock_that_starts_in_the_future_prunes_from_the_newest_file(tmp_path: Path) -> None:
    """A Pi without a real-time clock may start a year ahead: the first row prunes as if
    the day after the newest file were today, so the last keep_days of files stay."""
    logs = tmp_path / "logs"
    logs.mkdir()
    for day in ("2025-04-20", "2025-04-21", "2025-04-22", "2025-04-23"):
        (logs / f"battery-{day}.csv").write_text("old\n")
    sink, clock = make(tmp_path, "2026-04-24T12:00:00", signals=["soc"], keep_days=3)
    advance(sink, clock, 60, {1: {"soc": 1.0}})
    sink.stop()
    assert sorted(p.name for p in logs.iterdir()) == [
        "battery-2025-04-22.csv", "battery-2025-04-23.csv", "battery-2026-04-24.csv"]


def test_pruning_happens_again_each_new_day(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "battery-2025-04-23.csv").write_text("old\n")
    sink, clock = make(tmp_path, "2025-04-24T23:58:30", signals=["soc"], keep_days=2,
                       flush_every_secs=60)
    advance(sink, clock, 60, {1: {"soc": 1.0}})
    wait_for(lambda: (logs / "battery-2025-04-24.csv").exists())
    assert (logs / "battery-2025-04-23.csv").exists()
    advance(sink, clock, 60)
    sink.stop()
    assert sorted(p.name for p in logs.iterdir()) == ["battery-2025-04-24.csv",
                                                      "battery-2025-04-25.csv"]


def test_appends_after_a_restart_and_repairs_a_cut_row(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "battery-2025-04-24.csv").write_text(
        "time,soc\n2025-04-24T11:00:00+02:00,50.0\n2025-04-24T11:01:00+02:00,5")
    sink, clock = make(tmp_path, "2025-04-24T12:00:00", signals=["soc"])
    advance(sink, clock, 60, {1: {"soc": 51.0}})
    sink.stop()
    assert (logs / "battery-2025-04-24.csv").read_text() == (
        "time,soc\n2025-04-24T11:00:00+02:00,50.0\n2025-04-24T11:01:00+02:00,5\n"
        "2025-04-24T12:01:00+02:00,51.0\n")


@pytest.mark.parametrize("there", [
    b"time,voltage\n2025-04-24T11:00:00+02:00,52\n",
    b"\x89PNG\r\n\x1a\n\xff\xfe",  # not even text: never ours to append to
])
def test_other_columns_go_to_a_second_part_of_the_day(tmp_path: Path, there: bytes) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "battery-2025-04-24.csv").write_bytes(there)
    sink, clock = make(tmp_path, "2025-04-24T12:00:00", signals=["soc"])
    advance(sink, clock, 120, {1: {"soc": 51.0}})
    sink.stop()
    assert (logs / "battery-2025-04-24.csv").read_bytes() == there
    assert (logs / "battery-2025-04-24.1.csv").read_text() == (
        "time,soc\n2025-04-24T12:01:00+02:00,51.0\n2025-04-24T12:02:00+02:00,51.0\n")
    assert sink.status()["file"] == str(logs / "battery-2025-04-24.1.csv")


def test_an_unwritable_folder_is_logged_once_counted_and_recovers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink, clock = make(tmp_path, "2025-04-24T12:00:00", signals=["soc"], flush_every_secs=60)
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the folder should be\n")  # after check() passed
    caplog.set_level(logging.INFO)
    advance(sink, clock, 180, {1: {"soc": 40.0}})
    wait_for(lambda: sink.status()["errors"] == 3)  # one failed flush a minute
    status = sink.status()
    assert status["state"] == "error" and status["rows"] == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # rate-limited: one line, not one per flush
    assert errors[0].startswith(f"cannot write {tmp_path / 'logs'}")
    assert errors[0].endswith(": the rows wait in memory for the next flush, the pipeline "
                              "goes on")

    blocker.unlink()  # the operator fixes it; the next flush writes every waiting row
    advance(sink, clock, 60)
    wait_for(lambda: sink.status()["state"] == "ok")
    advance(sink, clock, 60)  # and the one after is nothing to tell
    sink.stop()
    assert (tmp_path / "logs" / "battery-2025-04-24.csv").read_text() == (
        "time,soc\n2025-04-24T12:01:00+02:00,40.0\n2025-04-24T12:02:00+02:00,40.0\n"
        "2025-04-24T12:03:00+02:00,40.0\n2025-04-24T12:04:00+02:00,40.0\n"
        "2025-04-24T12:05:00+02:00,40.0\n")
    assert sink.status()["errors"] == 3
    day = tmp_path / "logs" / "battery-2025-04-24.csv"
    assert caplog.messages.count(f"writing {day} again") == 1


def test_rows_beyond_what_memory_keeps_drop_the_oldest_and_say_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(datalog, "MAX_WAITING", 3)
    sink, clock = make(tmp_path, "2025-04-24T12:00:00", signals=["soc"])
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the folder should be\n")
    advance(sink, clock, 300, {1: {"soc": 40.0}, 150: {"soc": 41.0}})
    wait_for(lambda: sink.status()["rows_dropped"] == 2)
    assert sink.status()["state"] == "error"
    assert "3 rows wait for the disk: the oldest is dropped (1 so far)" in caplog.text
    blocker.unlink()
    sink.stop()
    assert (tmp_path / "logs" / "battery-2025-04-24.csv").read_text() == (
        "time,soc\n2025-04-24T12:03:00+02:00,41.0\n2025-04-24T12:04:00+02:00,41.0\n"
        "2025-04-24T12:05:00+02:00,41.0\n")


def test_a_stalled_disk_does_not_stall_the_engine(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    synced: list[int] = []

    def stalled_fsync(fd: int) -> None:
        release.wait(10)
        synced.append(fd)

    monkeypatch.setattr("canbridge_plugins.datalog.os.fsync", stalled_fsync)
    sink, clock = make(tmp_path, "2025-04-24T12:00:00", signals=["soc"])
    began = time.monotonic()
    advance(sink, clock, 180, {1: {"soc": 40.0}})
    assert time.monotonic() - began < 1.0 and sink.status()["rows"] == 3
    assert synced == []
    release.set()
    sink.stop()
    assert len(synced) >= 1
    assert (tmp_path / "logs" / "battery-2025-04-24.csv").read_text().count("\n") == 4


def test_a_fault_in_the_writer_is_told_and_the_writer_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("a bug in pruning")

    monkeypatch.setattr(datalog._Writer, "_prune", broken)
    sink, clock = make(tmp_path, "2025-04-24T12:00:00", signals=["soc"], flush_every_secs=60)
    advance(sink, clock, 60, {1: {"soc": 40.0}})
    wait_for(lambda: sink.status()["errors"] == 1)
    assert "writer failed: RuntimeError('a bug in pruning')" in caplog.text
    sink.stop()
    assert (tmp_path / "logs" / "battery-2025-04-24.csv").read_text() == (
        "time,soc\n2025-04-24T12:01:00+02:00,40.0\n")


def test_a_stop_the_disk_holds_up_past_its_timeout_is_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    monkeypatch.setattr("canbridge_plugins.datalog.os.fsync", lambda fd: release.wait(10))
    monkeypatch.setattr(datalog, "STOP_TIMEOUT_SECS", 0.2)
    sink, clock = make(tmp_path, "2025-04-24T12:00:00", signals=["soc"])
    advance(sink, clock, 60, {1: {"soc": 40.0}})
    try:
        sink.stop()
        assert sink.status()["errors"] == 1
        assert "the last rows were not written within 0.2 s" in caplog.messages
    finally:
        release.set()


def test_a_fast_replay_day_of_rows_is_written_whole(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten-second rows queued in one go, as a full-speed replay of a day does; each flush
    puts what waits on the card in one write (SD-card wear)."""
    synced: list[int] = []
    fsync = datalog.os.fsync
    monkeypatch.setattr("canbridge_plugins.datalog.os.fsync",
                        lambda fd: (synced.append(fd), fsync(fd)))
    sink, clock = make(tmp_path, "2025-04-24T00:00:00", signals=["soc"], every_secs=10,
                       stale_after_secs=0)
    advance(sink, clock, 86399, {0.5: {"soc": 10.0}})
    sink.stop()
    lines = (tmp_path / "logs" / "battery-2025-04-24.csv").read_text().splitlines()
    assert len(lines) == 1 + 8639
    assert lines[-1] == "2025-04-24T23:59:50+02:00,10.0"
    assert len(synced) == 86399 // 600 + 1  # one per flush_every_secs, and the stop's


@pytest.mark.parametrize(("options", "message"), [
    ({"signals": ["soc", "soc"]}, "signals: a signal is listed twice"),
    ({"signals": ["time"]}, 'signals: "time" is the timestamp column, not a signal'),
    ({"format": "xlsx"}, "format: 'xlsx' is not one of \"csv\", \"jsonl\""),
    ({"every_secs": 0.5}, "every_secs: 0.5 is out of range (>= 1, <= 86400)"),
    ({"keep_days": 0}, "keep_days: 0 is out of range (>= 1, <= 3650)"),
])
def test_bad_options(tmp_path: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as error:
        build(DataLog, {"inputs": ["x"], "path": str(tmp_path / "b.csv"), **options})
    assert str(error.value) == message


def test_check_refuses_a_folder_as_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as error:
        build(DataLog, {"inputs": ["x"], "path": str(tmp_path)})
    assert str(error.value) == f"path: {tmp_path} is a folder: name a file in it (battery.csv, say)"
    # A folder that does not exist yet is fine when it can be created; nothing is created.
    build(DataLog, {"inputs": ["x"], "path": str(tmp_path / "new" / "b.csv")},
          start=False).stop()
    assert not (tmp_path / "new").exists()


def test_a_full_speed_replay_through_canbridge_run(tmp_path: Path) -> None:
    """Ten minutes of 1 Hz frames replayed in a blink: rows on the capture's clock, split at
    local midnight, everything on disk when the run ends by itself."""
    start = at("2025-04-24T23:55:00")
    write_capture(tmp_path / "cap.log",
                  [(start + i, 0x123, bytes([i // 60])) for i in range(600)])
    (tmp_path / "pipe.toml").write_text(
        '[buses.battery]\ninterface = "replay"\npath = "cap.log"\nspeed = "max"\n'
        '[sources.frames]\ntype = "test-frames"\nbus = "battery"\n'
        '[sinks.log]\ntype = "datalog"\ninputs = ["frames"]\npath = "data/battery.csv"\n'
        'signals = ["byte0", "voltage"]\n'
        '[status]\nfile = "status.json"\n')
    result = run_canbridge("run", str(tmp_path / "pipe.toml"),
                           TZ="CET-1CEST,M3.5.0,M10.5.0/3")
    assert result.returncode == 0, result.stderr
    data = tmp_path / "data"
    assert (data / "battery-2025-04-24.csv").read_text() == (
        "time,byte0,voltage\n"
        "2025-04-24T23:56:00+02:00,0,\n2025-04-24T23:57:00+02:00,1,\n"
        "2025-04-24T23:58:00+02:00,2,\n2025-04-24T23:59:00+02:00,3,\n")
    assert (data / "battery-2025-04-25.csv").read_text() == (
        "time,byte0,voltage\n"
        "2025-04-25T00:00:00+02:00,4,\n2025-04-25T00:01:00+02:00,5,\n"
        "2025-04-25T00:02:00+02:00,6,\n2025-04-25T00:03:00+02:00,7,\n"
        "2025-04-25T00:04:00+02:00,8,\n")
    final = json.loads((tmp_path / "status.json").read_text())["components"]["log"]
    assert final["rows"] == 9 and final["errors"] == 0 and final["state"] == "ok"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that really fills up (needs root to mount)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_never_leaves_a_cut_row_and_loses_no_row(small_disk: Path) -> None:
    """A JSON Lines row cut by a full disk used to stay in the file and break json.loads for
    the whole file. Now the block that did not fit is removed whole and written later."""
    sink, clock = make(small_disk, "2025-04-24T12:00:00", format="jsonl", signals=["soc"],
                       flush_every_secs=60)
    log = small_disk / "logs" / "battery-2025-04-24.csv"  # JSON Lines, by the format
    advance(sink, clock, 60, {1: {"soc": 40.0}})
    wait_for(lambda: log.exists())
    filler = small_disk / "filler"
    with filler.open("wb", buffering=0) as file:  # fill the disk to its last bytes
        try:
            while True:
                file.write(b"x" * 512)
        except OSError:
            pass
    advance(sink, clock, 6000)  # 100 rows: past the room left in the file's last page
    wait_for(lambda: sink.status()["errors"] >= 1)
    written: list[object] = []

    def every_line_whole() -> bool:  # once the writer's queued retries have settled
        try:
            written[:] = [json.loads(line) for line in log.read_text().splitlines()]
        except ValueError:
            return False
        return True

    wait_for(every_line_whole)
    assert 1 <= len(written) < 101
    filler.unlink()  # room again
    advance(sink, clock, 60)
    sink.stop()
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 102  # not one row lost
    assert rows[0]["time"] == "2025-04-24T12:01:00+02:00"
    assert rows[-1]["time"] == "2025-04-24T13:42:00+02:00"


def test_rows_wait_for_the_flush_interval_and_survive_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f"""
[status]
file = "{tmp_path / 'status.json'}"
[buses.battery]
interface = "replay"
path = "{SAMPLE}"
loop = true
[sources.lynk]
type = "discover-lynk2"
bus = "battery"
[sinks.datalog]
type = "datalog"
inputs = ["lynk"]
path = "{tmp_path / 'log' / 'battery.csv'}"
every_secs = 1
""")
    proc = subprocess.Popen(canbridge_cmd("run", str(path)), env=subprocess_env(),
                            stderr=subprocess.PIPE, text=True)
    status = tmp_path / "status.json"
    wait_for(lambda: status.exists() and json.loads(status.read_text())["components"]
             ["datalog"]["rows"] >= 3, timeout=20)
    assert list((tmp_path / "log").glob("*.csv")) == []  # waiting for the 600 s flush
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
    rows = json.loads(status.read_text())["components"]["datalog"]["rows"]
    files = list((tmp_path / "log").glob("*.csv"))
    assert len(files) == 1
    assert len(files[0].read_text().splitlines()) == rows + 1  # header + every row
