"""The operator log: stderr (journald under systemd) plus an optional daily-rotated file.

Both are written by a log thread of their own: a journald that stops reading, or an SD card
that holds a write up, never delays the thread that logs, the engine's above all.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import logging.handlers
import os
import queue
import sys
import threading
from collections.abc import Mapping
from pathlib import Path as FilePath
from typing import Any

from canbridge.schema import Choice, Integer, Option, Path

LEVELS = ("debug", "info", "warning", "error")

LOG_OPTIONS: tuple[Option, ...] = (
    Option("file", Path(), default=None, written=True,
           help="also write the log to this file, rotated at midnight (unset: stderr only)"),
    Option("level", Choice(LEVELS), default="info",
           help="least important messages logged; `canbridge run --log-level` overrides it"),
    Option("keep_days", Integer(min=1), default=14,
           help="rotated log files kept, one per day"),
)

PLAIN_FORMAT = "%(levelname)s %(name)s: %(message)s"
TIMESTAMP_FORMAT = "%(asctime)s " + PLAIN_FORMAT

# journald reads a "<N>" syslog priority in front of a line (SyslogLevelPrefix=yes, the
# default), so `journalctl -p warning` works and errors show in red.
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


def stderr_is_journal(env: Mapping[str, str] = os.environ) -> bool:
    """True when stderr is connected to journald (systemd sets JOURNAL_STREAM=dev:inode)."""
    try:
        device, inode = (int(part) for part in env.get("JOURNAL_STREAM", "").split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


LOG_QUEUE_LIMIT = 10_000
"""Records waiting for the log thread at most; beyond, new ones are dropped and counted."""
LOG_DRAIN_SECS = 2.0
"""How long the process's exit waits for the log thread to write what waits."""


class _Handoff(logging.handlers.QueueHandler):
    """Hands each record, formatted, to the log thread, which passes it to `targets`."""

    def __init__(self, targets: list[logging.Handler]):
        super().__init__(queue.Queue(LOG_QUEUE_LIMIT))
        self.targets = targets
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="canbridge-log", daemon=True)
        self._thread.start()

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1  # lines may go; the engine does not wait for the disk

    def _run(self) -> None:
        told = 0
        while (record := self.queue.get()) is not None:
            if self.dropped != told:
                lost, told = self.dropped - told, self.dropped
                self._write(logging.makeLogRecord({
                    "name": "canbridge", "levelno": logging.WARNING, "levelname": "WARNING",
                    "msg": f"{lost} log lines dropped: the log output was stalled"}))
            self._write(record)
            self.queue.task_done()
        self.queue.task_done()

    def _write(self, record: logging.LogRecord) -> None:
        for target in self.targets:
            if record.levelno >= target.level:
                target.handle(record)

    def flush(self, timeout: float = LOG_DRAIN_SECS) -> None:
        """Wait (at most `timeout`) until the log thread has written every waiting record."""
        done = self.queue.all_tasks_done
        with done:
            done.wait_for(lambda: not self.queue.unfinished_tasks, timeout)

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self.queue.put(None, timeout=LOG_DRAIN_SECS)
        self._thread.join(LOG_DRAIN_SECS)
        for target in self.targets:
            target.close()
        super().close()


def flush_logs(timeout: float = LOG_DRAIN_SECS) -> None:
    """Wait until the log thread has written every record logged so far."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _Handoff):
            handler.flush(timeout)


RECENT_EVENTS = 50


class RecentEvents(logging.Handler):
    """The last RECENT_EVENTS operator log events, for the web page (any thread may log)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_EVENTS)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad log call must not break logging
            message = str(record.msg)
        self.events.append({"time": record.created, "level": record.levelname.lower(),
                            "source": record.name.removeprefix("canbridge."),
                            "message": message})


RECENT = RecentEvents()


def recent_events() -> list[dict[str, Any]]:
    """The operator log's latest events, oldest first."""
    return list(RECENT.events)


def setup_logging(table: Mapping[str, Any], cli_level: str | None) -> None:
    """Configure the root logger from the pipeline's `[log]` table (defaults filled in or not).

    Safe to call again: handlers installed by an earlier call are replaced.
    """
    values = {option.name: option.default for option in LOG_OPTIONS} | dict(table)
    level = getattr(logging, (cli_level or values["level"]).upper())
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_canbridge", False)]:
        root.removeHandler(handler)
        handler.close()

    stderr = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        stderr.setFormatter(_JournalFormatter(PLAIN_FORMAT))  # journald adds the time
    else:
        stderr.setFormatter(logging.Formatter(TIMESTAMP_FORMAT))
    targets: list[logging.Handler] = [stderr]
    problem = None
    if values["file"]:
        path = FilePath(values["file"])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.TimedRotatingFileHandler(
                path, when="midnight", backupCount=values["keep_days"],
                encoding="utf-8")
        except OSError as exc:
            problem = (path, exc.strerror or exc)
        else:
            handler.setFormatter(logging.Formatter(TIMESTAMP_FORMAT))
            targets.append(handler)
    _install(root, _Handoff(targets))
    _install(root, RECENT)
    root.setLevel(level)
    if problem is not None:
        logging.getLogger("canbridge").error(
            "cannot open log file %s (%s): logging to stderr only", *problem)


def _install(root: logging.Logger, handler: logging.Handler) -> None:
    if handler in root.handlers:
        return
    handler._canbridge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
