"""The operator log: stderr (journald under systemd) plus an optional daily-rotated file."""

from __future__ import annotations

import collections
import logging
import logging.handlers
import os
import sys
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
    _install(root, stderr)
    _install(root, RECENT)
    root.setLevel(level)

    if values["file"]:
        path = FilePath(values["file"])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.TimedRotatingFileHandler(
                path, when="midnight", backupCount=values["keep_days"],
                encoding="utf-8")
        except OSError as exc:
            logging.getLogger("canbridge").error(
                "cannot open log file %s (%s): logging to stderr only", path,
                exc.strerror or exc)
            return
        handler.setFormatter(logging.Formatter(TIMESTAMP_FORMAT))
        _install(root, handler)


def _install(root: logging.Logger, handler: logging.Handler) -> None:
    if handler in root.handlers:
        return
    handler._canbridge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
