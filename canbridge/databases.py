"""DBC databases: parsed by cantools once, kept as compiled layouts, cached on disk.

What the codec and the plugins need of a DBC (each message's ID, length, and its signals'
bits, scale, range and choices) is a `DbcLayout`. Built from cantools' parse, it is cached
in the cache folder, keyed by the file's bytes, the cantools version and this module's
format, so a start with a warm cache neither imports cantools nor parses a DBC (40 ms here,
several times that on a Pi). A message the generated codec cannot serve (big-endian, float,
multiplexed) loads its cantools message when its codec is built. A cache that cannot be read
or written only costs the next start its parse.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from canbridge.locations import read_cache, write_cache
from canbridge.versions import package_version

if TYPE_CHECKING:
    import cantools.database

LAYOUT_FORMAT = 1
"""Bumped whenever what a cached layout holds changes: older cache files are then ignored."""


def builtin_dbc(name: str) -> Path:
    """Path of a DBC file shipped with canbridge (`dbc/NAME.dbc` in the repository)."""
    return Path(str(resources.files("canbridge.dbc").joinpath(f"{name}.dbc")))


class DbcError(ValueError):
    """A DBC file that cannot be used; the message names the file (and the line)."""


@dataclass(frozen=True)
class SignalLayout:
    """One signal as cantools read it (the attribute names are cantools')."""

    name: str
    start: int
    length: int
    byte_order: str
    is_signed: bool
    is_float: bool
    scale: float
    offset: float
    minimum: float | None
    maximum: float | None
    unit: str | None
    choices: dict[int, str] = field(hash=False)


@dataclass(frozen=True)
class MessageLayout:
    """One message as cantools read it; `cantools()` is the parsed message itself."""

    path: str
    name: str
    frame_id: int
    is_extended_frame: bool
    length: int
    signals: tuple[SignalLayout, ...]
    multiplexed: bool
    is_container: bool

    def is_multiplexed(self) -> bool:
        return self.multiplexed

    def cantools(self) -> cantools.database.can.Message:
        """The cantools message (parses the DBC once per process)."""
        return parse_dbc(self.path).get_message_by_name(self.name)


class DbcLayout:
    """The messages of one DBC file."""

    def __init__(self, messages: list[MessageLayout]):
        self.messages = messages
        self._by_name = {message.name: message for message in messages}

    def get_message_by_name(self, name: str) -> MessageLayout:
        return self._by_name[name]


def parse_dbc(path: Path | str) -> cantools.database.can.Database:
    """cantools' database of one DBC file, parsed once per process; DbcError says, in one
    line naming the file, why it cannot be used."""
    return _parse(str(path))


@functools.cache
def _parse(path: str) -> cantools.database.can.Database:
    import cantools.database

    try:
        return cantools.database.load_file(path, database_format="dbc", strict=True)
    except OSError as exc:
        raise DbcError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # cantools raises several kinds for a bad file
        text = str(exc)
        found = re.search(r"line (\d+), column (\d+): (.*)", text, re.S)
        if found:
            line, column, rest = found.groups()
            near = rest.strip().strip('"').strip()
            raise DbcError(f"{path}:{line}: not a valid DBC file (column {column}: {near})"
                           ) from None
        raise DbcError(f"{path}: not a valid DBC file ({text})") from None


def load_dbc(path: Path | str) -> DbcLayout:
    """The layout of one DBC file, from the cache when it holds this file's bytes, else from
    cantools' parse; once per process. DbcError says, in one line naming the file, why it
    cannot be used."""
    return _load(str(path))


@functools.cache
def _load(path: str) -> DbcLayout:
    try:
        digest = _digest(Path(path).read_bytes())
    except OSError as exc:
        raise DbcError(f"cannot read {path}: {exc.strerror or exc}") from None
    name = _cache_name(path)
    layout = _from_cache(read_cache(name), digest, path)
    if layout is None:
        layout = _layout(_parse(path), path)
        write_cache(name, _to_cache(layout, digest))
    return layout


def dbc_problem(path: Path | str) -> str | None:
    """Why the DBC file at `path` cannot be used, in one line naming the file, or None."""
    try:
        load_dbc(path)
    except DbcError as exc:
        return str(exc)
    return None


def _layout(db: cantools.database.can.Database, path: str) -> DbcLayout:
    return DbcLayout([
        MessageLayout(
            path=path, name=m.name, frame_id=m.frame_id, is_extended_frame=m.is_extended_frame,
            length=m.length, multiplexed=m.is_multiplexed(), is_container=m.is_container,
            signals=tuple(SignalLayout(
                name=s.name, start=s.start, length=s.length, byte_order=s.byte_order,
                is_signed=s.is_signed, is_float=s.is_float, scale=s.scale, offset=s.offset,
                minimum=s.minimum, maximum=s.maximum, unit=s.unit,
                choices={int(raw): str(text) for raw, text in (s.choices or {}).items()})
                for s in m.signals))
        for m in db.messages])


def _digest(data: bytes) -> str:
    key = f"{LAYOUT_FORMAT} {package_version('cantools')} ".encode() + data
    return hashlib.sha256(key).hexdigest()


def _cache_name(path: str) -> str:
    where = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
    return f"dbc/{Path(path).stem}-{where}.json"


def _from_cache(doc: Any, digest: str, path: str) -> DbcLayout | None:
    try:
        if doc["digest"] != digest:
            return None
        messages = []
        for m in doc["messages"]:
            signals = tuple(SignalLayout(**{**s, "choices": {int(k): v for k, v in
                                                             s["choices"].items()}})
                            for s in m.pop("signals"))
            messages.append(MessageLayout(path=path, signals=signals, **m))
        return DbcLayout(messages)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _to_cache(layout: DbcLayout, digest: str) -> dict[str, Any]:
    messages = []
    for message in layout.messages:
        doc: dict[str, Any] = asdict(message)
        del doc["path"]  # the loader knows it
        messages.append(doc)
    return {"digest": digest, "messages": messages}
