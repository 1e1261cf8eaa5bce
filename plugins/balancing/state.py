"""The balancing state file: when the last balance ended and whether a hold is in progress.

The file is small TOML with Unix times written as UTC date-times, so it survives restarts and
a person can read it. The core's writer replaces it atomically (temp file in the same folder,
fsync, rename, fsync of the folder): a crash or power cut leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import tomli_w

from canbridge.documents import toml_document
from canbridge.writer import write_atomic

VERSION = 1
HEADER = ("# canbridge cell-balancing state, rewritten by canbridge: "
          "delete the file to forget past balances\n")


@dataclass(frozen=True)
class SavedState:
    """Unix times: the end of the last completed hold, and the start of a hold in progress."""

    last_end: float | None = None
    hold_started: float | None = None


class CorruptState(ValueError):
    """The file exists but does not hold a state this version understands."""


def to_datetime(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


@functools.lru_cache(maxsize=8)
def iso(unix: float) -> str:
    """An ISO 8601 date-time with offset, to the second, for signals and status (the same
    few dates are asked for on every SOC update)."""
    return to_datetime(unix).isoformat(timespec="seconds")


def dumps(state: SavedState) -> str:
    doc: dict[str, object] = {"version": VERSION}
    if state.last_end is not None:
        doc["last_balanced"] = to_datetime(state.last_end)
    if state.hold_started is not None:
        doc["hold"] = {"started": to_datetime(state.hold_started)}
    return HEADER + tomli_w.dumps(doc)


def loads(text: str) -> SavedState:
    try:
        doc = toml_document(text)
    except ValueError as exc:
        raise CorruptState(f"not valid TOML ({exc})") from None
    if doc.get("version") != VERSION:
        raise CorruptState(f"version is {doc.get('version')!r}, expected {VERSION}")
    hold = doc.get("hold", {})
    if not isinstance(hold, dict):
        raise CorruptState("hold is not a table")
    return SavedState(_unix(doc.get("last_balanced"), "last_balanced"),
                      _unix(hold.get("started"), "hold.started"))


def _unix(value: object, key: str) -> float | None:
    if value is None:
        return None
    # a date-time without offset is ambiguous across time zones and DST: refuse it
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise CorruptState(f"{key} is not a date-time with a UTC offset: {value!r}")
    return value.timestamp()


def read_state(path: Path) -> SavedState:
    """The state in `path`. Raises FileNotFoundError, OSError or CorruptState."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptState("not UTF-8 text") from None
    return loads(text)


def set_aside(path: Path) -> Path:
    """Move a corrupt file to `NAME.corrupt` (replacing an older one) and return that path."""
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    return aside


def write_state(path: Path, state: SavedState) -> None:
    """Write `state` now (the transform itself writes through the core's background writer)."""
    write_atomic(path, dumps(state))


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."  # as canbridge.writer names its temp files


def remove_leftover_temps(path: Path) -> list[Path]:
    """Delete temp files a killed writer left beside `path`; returns what was removed."""
    removed = []
    with contextlib.suppress(OSError):
        for temp in path.parent.glob(_temp_prefix(path) + "*.tmp"):
            with contextlib.suppress(OSError):
                temp.unlink()
                removed.append(temp)
    return removed
