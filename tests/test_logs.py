"""The operator log: stderr lines for journald or a terminal, levels, the optional file."""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TextIO

import pytest

from canbridge.logs import RECENT, flush_logs, setup_logging

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


@pytest.fixture(autouse=True)
def root_logger() -> Iterator[logging.Logger]:
    """Put the root logger back as it was: setup_logging changes process-wide state."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TextIO]:
    """stderr as a real file, so it has a device and inode like journald's stream.

    Patched where canbridge.logs looks it up: pytest puts its own sys.stderr back for the
    test call."""
    with (tmp_path / "stderr").open("w+") as file:
        monkeypatch.setattr("canbridge.logs.sys", SimpleNamespace(stderr=file))
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        yield file


def written(file: TextIO) -> list[str]:
    flush_logs()
    file.flush()
    return Path(file.name).read_text().splitlines()


def ours(root: logging.Logger) -> list[logging.Handler]:
    """The output handlers setup_logging installed, behind the log thread's handoff (the web
    page's event ring aside)."""
    [handoff] = [h for h in root.handlers if getattr(h, "_canbridge", False) and h is not RECENT]
    return handoff.targets  # type: ignore[attr-defined]


def test_terminal_lines_have_timestamps(stderr: TextIO) -> None:
    setup_logging({}, None)
    logging.getLogger("canbridge.bus").warning("bus %s: send failed", "inverter")
    logging.getLogger("canbridge.lynk").debug("not at info")
    [line] = written(stderr)
    assert re.fullmatch(STAMP + " WARNING canbridge.bus: bus inverter: send failed", line), line


def test_journald_lines_carry_a_priority_and_no_timestamp(
        stderr: TextIO, monkeypatch: pytest.MonkeyPatch) -> None:
    info = os.fstat(stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    setup_logging({"level": "debug"}, None)
    log = logging.getLogger("canbridge.inverter")
    log.critical("cannot go on")
    log.error("stale battery data: safe state")
    log.warning("bus reopened")
    log.info("fresh again")
    log.debug("detail")
    assert written(stderr) == ["<2>CRITICAL canbridge.inverter: cannot go on",
                               "<3>ERROR canbridge.inverter: stale battery data: safe state",
                               "<4>WARNING canbridge.inverter: bus reopened",
                               "<6>INFO canbridge.inverter: fresh again",
                               "<7>DEBUG canbridge.inverter: detail"]


def test_another_journal_stream_is_not_ours(stderr: TextIO,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Inherited from a parent whose stderr went to the journal, but ours is redirected.
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    setup_logging({}, None)
    logging.getLogger("canbridge").info("hello")
    assert re.fullmatch(STAMP + " INFO canbridge: hello", written(stderr)[0])


def test_the_command_line_level_wins(stderr: TextIO) -> None:
    setup_logging({"level": "error"}, None)
    logging.getLogger("canbridge").warning("hidden")
    setup_logging({"level": "error"}, "debug")
    logging.getLogger("canbridge").debug("shown")
    lines = written(stderr)
    assert len(lines) == 1 and lines[0].endswith(" DEBUG canbridge: shown")


def test_calling_again_replaces_its_handlers(stderr: TextIO, root_logger: logging.Logger,
                                             tmp_path: Path) -> None:
    setup_logging({"file": str(tmp_path / "a.log")}, None)
    setup_logging({"file": str(tmp_path / "b.log")}, None)
    assert len(ours(root_logger)) == 2
    logging.getLogger("canbridge").warning("once")
    assert len(written(stderr)) == 1  # and the first handoff was closed: a.log is done
    assert (tmp_path / "a.log").read_text() == ""
    assert (tmp_path / "b.log").read_text().endswith(" WARNING canbridge: once\n")


def test_a_daily_rotated_file(stderr: TextIO, root_logger: logging.Logger,
                              tmp_path: Path) -> None:
    path = tmp_path / "log" / "canbridge.log"
    setup_logging({"file": str(path), "keep_days": 7, "level": "info"}, None)
    logging.getLogger("canbridge.mqtt").info("connected to %s", "localhost")
    [handler] = [h for h in ours(root_logger)
                 if isinstance(h, logging.handlers.TimedRotatingFileHandler)]
    assert (handler.when, handler.backupCount) == ("MIDNIGHT", 7)
    flush_logs()
    [line] = path.read_text().splitlines()
    assert re.fullmatch(STAMP + " INFO canbridge.mqtt: connected to localhost", line)
    assert len(written(stderr)) == 1  # and on stderr too


def test_a_file_that_cannot_be_opened_leaves_stderr(stderr: TextIO, root_logger: logging.Logger,
                                                    tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    setup_logging({"file": str(tmp_path / "blocker" / "canbridge.log")}, None)
    logging.getLogger("canbridge").warning("still here")
    lines = written(stderr)
    assert len(lines) == 2
    assert re.fullmatch(STAMP + f" ERROR canbridge: cannot open log file "
                        f"{re.escape(str(tmp_path / 'blocker' / 'canbridge.log'))} "
                        r"\(.+\): logging to stderr only", lines[0]), lines[0]
    assert lines[1].endswith(" WARNING canbridge: still here")
    assert len(ours(root_logger)) == 1


def test_the_last_fifty_events_are_kept_for_the_web_page(stderr: TextIO) -> None:
    from canbridge.logs import recent_events

    setup_logging({}, None)
    log = logging.getLogger("canbridge.inverter")
    for n in range(60):
        log.warning("event %d", n)
    events = recent_events()
    assert len(events) == 50
    assert (events[-1]["source"], events[-1]["level"], events[-1]["message"]) == (
        "inverter", "warning", "event 59")


def test_a_stalled_log_output_never_holds_up_the_thread_that_logs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """journald that stops reading (or a busy SD card under the log file) once blocked every
    thread that logged, the engine's too. Now the log thread waits, and nothing is lost."""
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stalled, os.fdopen(read_end, "rb") as reader:
        monkeypatch.setattr("canbridge.logs.sys", SimpleNamespace(stderr=stalled))
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        setup_logging({}, None)
        line = "x" * 100
        logger = threading.Thread(target=lambda: [
            logging.getLogger("canbridge").warning("%d %s", n, line) for n in range(2000)])
        logger.start()
        logger.join(5.0)  # 200 kB: three times what a pipe holds before writes block
        assert not logger.is_alive()
        received = b""
        while received.count(b"\n") < 2000:
            received += reader.read1(65536)
    lines = received.decode().splitlines()
    assert [int(text.split(" WARNING canbridge: ")[1].split()[0]) for text in lines] == list(
        range(2000))
