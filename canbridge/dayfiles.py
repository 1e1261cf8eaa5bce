"""Day files: `battery.csv` is written as battery-2025-04-24.csv, battery-2025-04-25.csv, ...

The naming is shared by the data log (which writes them) and the web page (which reads
today's back at start-up), so it lives here once.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

TIME_COLUMN = "time"
"""The first column (CSV) or key (JSON Lines) of every row: ISO 8601 local time."""


def day_file(path: Path, day: date, part: int = 0) -> Path:
    """battery.csv -> battery-2025-04-24.csv; a second part of that day: battery-2025-04-24.1.csv"""
    suffix = f".{part}{path.suffix}" if part else path.suffix
    return path.with_name(f"{path.stem}-{day.isoformat()}{suffix}")


def day_of(path: Path, candidate: str) -> date | None:
    """The date of one of `path`'s day files by its name, or None for any other file."""
    pattern = (re.escape(path.stem) + r"-(\d{4}-\d{2}-\d{2})(?:\.\d+)?"
               + re.escape(path.suffix) + "$")
    match = re.match(pattern, candidate)
    if match is None:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None
