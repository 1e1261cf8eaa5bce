"""The data log sink: one row of the latest battery values per interval, one file per day.

`path = "/var/log/canbridge/battery.csv"` writes battery-2025-04-24.csv, battery-2025-04-25.csv,
... (the local date of the rows in it) and deletes its own files older than `keep_days`.
Rows carry an ISO 8601 local time with its UTC offset; a signal not seen within
`stale_after_secs` is an empty cell (JSON null), so an outage shows as a gap, not a flat line.

Files are written by a thread of the sink's own: an SD card can stall an fsync for seconds,
and the engine thread must keep the inverter fed meanwhile. Rows wait in memory and go to
the card as one block every `flush_every_secs` (and at stop, SIGTERM included): a power cut
loses at most that long of rows, and the card sees one write where it would see ten
(SD-card wear; see benchmarks/). A block that does not fit (a full disk) is removed again
whole, so a file never holds a cut row.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import queue
import threading
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from pathlib import Path as FilePath
from typing import Any

from canbridge import (
    REQUIRED,
    Choice,
    Integer,
    ListOf,
    Number,
    Option,
    Path,
    Sink,
    Text,
    hookimpl,
)
from canbridge.clock import SIDE_SLACK_SECS
from canbridge.dayfiles import TIME_COLUMN, day_file, day_of
from canbridge.signals import unknown_signal_warnings

DEFAULT_SIGNALS = ["soc", "soc_reported", "voltage", "current", "temperature",
                   "charge_voltage_limit", "charge_current_limit", "discharge_current_limit",
                   "discharge_voltage_limit", "balancing_active"]
STOP_TIMEOUT_SECS = 10.0
"""How long stop() waits for the writer to put the last rows on disk."""
MAX_WAITING = 100_000
"""Rows kept in memory while the disk refuses them (about 70 days at one a minute)."""


class _Writer:
    """The sink's own thread: rows wait in memory and go to disk as one block per flush.

    Jobs: "append" (a row for a day), "flush" (write what waits, fsync), "prune". Results,
    for the engine thread to log: "error", "ok" (writing works again), "opened" (a file
    name), "deleted" (an old file removed). A block that fails to go out whole (a full disk)
    is cut off the file again, so the file never holds half a row, and its rows wait for
    the next flush (at most MAX_WAITING rows: the oldest go first).
    """

    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"datalog-{name}", daemon=True)
        self._waiting: list[tuple[FilePath, date, str | None, str]] = []
        self._targets: dict[date, FilePath] = {}
        self._file_path: FilePath | None = None
        self._failing = False
        self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def append(self, path: FilePath, day: date, header: str | None, line: str) -> None:
        self._jobs.put(("append", path, day, header, line))

    def flush(self) -> None:
        self._jobs.put(("flush",))

    def prune(self, path: FilePath, today: date, keep_days: int, first: bool) -> None:
        self._jobs.put(("prune", path, today, keep_days, first))

    def close(self, timeout: float) -> bool:
        """Write what waits and end the thread; False if that did not finish in time."""
        if self._thread.ident is None:
            return True  # never started
        self._jobs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    self._write_waiting()
                    return
                if job[0] == "append":
                    self._waiting.append(job[1:])
                    if len(self._waiting) > MAX_WAITING:
                        del self._waiting[0]
                        self.dropped += 1
                        self.results.put(("error", f"{MAX_WAITING} rows wait for the disk: "
                                                   f"the oldest is dropped ({self.dropped} "
                                                   "so far)"))
                elif job[0] == "flush":
                    self._write_waiting()
                else:
                    self._prune(*job[1:])
            except Exception as exc:  # keep the thread alive: rows would pile up unseen
                self.results.put(("error", f"writer failed: {exc!r}"))

    def _write_waiting(self) -> None:
        """Every waiting row, one block per file, in order."""
        while self._waiting:
            path, day, header, _ = self._waiting[0]
            count = 1
            while (count < len(self._waiting)
                   and self._waiting[count][:3] == (path, day, header)):
                count += 1
            lines = [row[3] for row in self._waiting[:count]]
            if not self._write_block(path, day, header, lines):
                return  # they wait for the next flush
            del self._waiting[:count]

    def _write_block(self, path: FilePath, day: date, header: str | None,
                     lines: list[str]) -> bool:
        target = self._targets.get(day) or day_file(path, day)
        try:
            if day not in self._targets:
                target = self._choose(path, day, header)
                self._targets = {day: target}  # one day at a time: forget yesterday's
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "ab", buffering=0) as file:
                size = file.seek(0, os.SEEK_END)
                prefix = ""
                if size == 0:
                    prefix = header or ""
                elif not _ends_with_newline(target):
                    prefix = "\n"  # a row cut short by a power loss stays alone on its line
                data = (prefix + "".join(lines)).encode("utf-8")
                try:
                    view = memoryview(data)
                    while view:
                        view = view[file.write(view):]
                    os.fsync(file.fileno())
                except OSError:
                    # Never leave half a row behind (a full disk): cut the block off again.
                    with contextlib.suppress(OSError):
                        os.ftruncate(file.fileno(), size)
                    raise
        except OSError as exc:
            self._failing = True
            self.results.put(("error", f"cannot write {target}: {exc.strerror or exc}"))
            return False
        if target != self._file_path:
            self._file_path = target
            self.results.put(("opened", str(target)))
        if self._failing:
            self._failing = False
            self.results.put(("ok", f"writing {target} again"))
        return True

    @staticmethod
    def _choose(path: FilePath, day: date, header: str | None) -> FilePath:
        """The day file, or its next part when the file there has other columns."""
        part = 0
        while True:
            candidate = day_file(path, day, part)
            if header is None or _first_line(candidate) in (None, header):
                return candidate
            part += 1

    def _prune(self, path: FilePath, today: date, keep_days: int, first: bool) -> None:
        """Delete day files older than keep_days, judged by the files' own dates: at the
        first row of a run, relative to the newest day file already there (a clock that
        starts in the future must not empty the folder); never today's file."""
        try:
            names = os.listdir(path.parent)
        except OSError:
            return  # no folder yet: nothing to delete
        days = {name: day for name in names if (day := day_of(path, name)) is not None}
        reference = today
        if first:
            earlier = [day for day in days.values() if day < today]
            if earlier:
                reference = min(today, max(earlier) + timedelta(days=1))
        oldest_kept = reference - timedelta(days=keep_days - 1)
        for name, day in sorted(days.items()):
            if day < oldest_kept and day != today:
                try:
                    (path.parent / name).unlink()
                    self.results.put(("deleted", f"deleted {path.parent / name}"))
                except OSError as exc:
                    self.results.put(("error", f"cannot delete {path.parent / name}: "
                                               f"{exc.strerror or exc}"))


def _first_line(path: FilePath) -> str | None:
    try:
        with path.open(encoding="utf-8", newline="") as file:
            return file.readline() or None
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        return ""  # not a text file of ours: never append to it


def _ends_with_newline(path: FilePath) -> bool:
    with path.open("rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


class DataLog(Sink):
    """Appends the latest values of chosen signals to a daily CSV or JSON Lines file."""

    type_name = "datalog"
    summary = "log chosen signals every interval to daily CSV or JSON Lines files"
    options = (
        Option("path", Path(non_empty=True), REQUIRED,
               help="log file name; each day goes to NAME-YYYY-MM-DD.EXT beside it",
               written=True),
        Option("every_secs", Number(min=1.0, max=86400.0), 60.0,
               help="one row every this many seconds"),
        Option("format", Choice(("csv", "jsonl")), "csv",
               help='"csv" (header, booleans as 1/0) or "jsonl" (one JSON object per line)'),
        Option("keep_days", Integer(min=1, max=3650), 30,
               help="day files kept, today included; older ones of this log are deleted"),
        Option("signals", ListOf(Text(non_empty=True), non_empty=True), DEFAULT_SIGNALS,
               help="signals logged, one column each, in this order"),
        Option("stale_after_secs", Number(min=0.0, max=86400.0), 300.0,
               help="a signal not updated for this long is logged empty (0: never)"),
        Option("flush_every_secs", Number(min=1.0, max=86400.0), 600.0,
               help="rows are written to disk together this often (and at stop); a power cut "
                    "loses at most this long of rows, and the SD card is written less"),
    )

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
        path = FilePath(config["path"])
        if path.is_dir():
            return [("path", f"{path} is a folder: name a file in it (battery.csv, say)")]
        if len(set(config["signals"])) != len(config["signals"]):
            return [("signals", "a signal is listed twice")]
        if TIME_COLUMN in config["signals"]:
            return [("signals", f'"{TIME_COLUMN}" is the timestamp column, not a signal')]
        # A place that cannot be written is a warning, by the core (written=True).
        return unknown_signal_warnings("signals", config["signals"])

    def __init__(self, name: str, config: Mapping[str, Any], context: Any):
        super().__init__(name, config, context)
        self.path = FilePath(context.pipeline_dir) / config["path"]
        self.signals: list[str] = list(config["signals"])
        self.every_secs: float = config["every_secs"]
        self.keep_days: int = config["keep_days"]
        self.stale_after: float = config["stale_after_secs"]
        self.csv = config["format"] == "csv"
        self.latest = context.latest
        self.rows = 0
        self.last_row: float | None = None
        self.failing = False
        self.file: str | None = None
        self._day: date | None = None
        self._writer = _Writer(name)

    def start(self) -> None:
        self._writer.start()
        self.clock.every(self.every_secs, self._write_row, slack=SIDE_SLACK_SECS)
        self.clock.every(self.config["flush_every_secs"], self._writer.flush,
                         slack=SIDE_SLACK_SECS)

    def _write_row(self) -> None:
        self._collect_results()
        if self.latest.last_update is None:
            return  # nothing seen yet: an all-empty row says nothing
        now = self.clock.now()
        stamp = datetime.fromtimestamp(self.clock.wall_time(now)).astimezone()
        day = stamp.date()
        if day != self._day:
            previous, self._day = self._day, day
            if previous is None or day == previous + timedelta(days=1):
                self._writer.prune(self.path, day, self.keep_days, first=previous is None)
            else:
                # A wall clock stepped (NTP at boot on a Pi without RTC): no file is deleted
                # because of that.
                self.log.warning("%s: the wall clock moved from %s to %s: old day files are "
                                 "not pruned for this change", self.name, previous, day)
        values = [self._value(name, now) for name in self.signals]
        time_text = stamp.isoformat(timespec="seconds")
        if self.csv:
            header = _csv_line([TIME_COLUMN, *self.signals])
            line = _csv_line([time_text, *(_csv_cell(v) for v in values)])
        else:
            header = None
            line = json.dumps({TIME_COLUMN: time_text, **dict(zip(self.signals, values,
                                                                  strict=True))}) + "\n"
        self._writer.append(self.path, day, header, line)
        self.rows += 1
        self.last_row = now

    def _value(self, name: str, now: float) -> Any:
        updated = self.latest.updated_at(name)
        if updated is None or (self.stale_after and now - updated > self.stale_after):
            return None
        value = self.latest[name]
        return round(value, 6) if isinstance(value, float) else value

    def _collect_results(self) -> None:
        """Log and count what the writer thread reported, here on the engine thread."""
        while True:
            try:
                kind, message = self._writer.results.get_nowait()
            except queue.Empty:
                return
            if kind == "error":
                self.errors += 1
                self.failing = True
                self.context.limited.error("write", "%s: the rows wait in memory for the "
                                           "next flush, the pipeline goes on", message)
            elif kind == "ok":
                self.failing = False
                self.log.warning("%s", message)
            elif kind == "opened":
                if message != self.file:
                    self.log.info("writing %s", message)
                self.file = message
            else:
                self.log.info("%s", message)

    def stop(self) -> None:
        if not self._writer.close(STOP_TIMEOUT_SECS):
            self.errors += 1
            self.log.error("the last rows were not written within %g s", STOP_TIMEOUT_SECS)
        self._collect_results()

    def status(self) -> dict[str, Any]:
        self._collect_results()
        if self.failing:
            state = "error"
        elif self.latest.last_update is None:
            state = "waiting"
        else:
            state = "ok"
        return {"state": state, "rows": self.rows, "rows_dropped": self._writer.dropped,
                "errors": self.errors,
                "last_seen_age": self.age(self.latest.last_update),
                "last_row_age": self.age(self.last_row),
                "file": self.file}


def _csv_line(cells: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


@hookimpl
def canbridge_component_types() -> list[type]:
    return [DataLog]
