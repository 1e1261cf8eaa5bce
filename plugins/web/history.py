"""The page's 24-hour charts: one point a minute per series in a bounded ring, refilled
from today's and yesterday's data-log files at start-up."""

from __future__ import annotations

import collections
import csv
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from canbridge.dayfiles import TIME_COLUMN, day_file
from canbridge.documents import json_document

SERIES = ("soc", "voltage", "current", "charge_voltage_limit", "charge_current_limit",
          "discharge_current_limit", "discharge_voltage_limit")
POINTS = 24 * 60
"""One a minute for 24 hours: 1440 points x 8 numbers, about 150 KB of Python objects."""

Point = tuple[float, ...]


class History:
    """(Unix time, *SERIES) points, oldest first, at most POINTS of them."""

    def __init__(self) -> None:
        self.points: collections.deque[Point] = collections.deque(maxlen=POINTS)

    def add(self, when: float, values: Mapping[str, Any]) -> None:
        self.points.append((round(when, 1), *(_number(values.get(name)) for name in SERIES)))

    def document(self) -> dict[str, Any]:
        points = list(self.points)
        return {"series": list(SERIES), "time": [p[0] for p in points],
                **{name: [p[i + 1] for p in points] for i, name in enumerate(SERIES)}}

    def refill(self, path: Path, now: datetime) -> int:
        """Points from yesterday's and today's day files of the data log at `path` (within
        the last 24 h); returns how many were read."""
        rows: list[Point] = []
        for day in (now.date() - timedelta(days=1), now.date()):
            rows += _read_rows(day_file(path, day), now.timestamp() - 86400)
        for row in rows[-POINTS:]:
            self.points.append(row)
        return len(rows)


def _read_rows(file: Path, since: float) -> list[Point]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    if file.suffix == ".csv":
        records: Iterable[Mapping[str, Any]] = csv.DictReader(text.splitlines())
    else:
        records = [_json(line) for line in text.splitlines()]
    out = []
    for record in records:
        try:
            when = datetime.fromisoformat(str(record.get(TIME_COLUMN))).timestamp()
        except ValueError:
            continue  # a cut row, a header of another format
        if when >= since:
            out.append((round(when, 1), *(_number(record.get(name)) for name in SERIES)))
    return out


def _json(line: str) -> Mapping[str, Any]:
    try:
        value = json_document(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value in (None, ""):
        return None
    try:
        return round(float(value), 3)
    except (TypeError, ValueError):
        return None
