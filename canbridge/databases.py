"""DBC databases, loaded once with cantools and shared by everything that needs them."""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path

import cantools.database


def builtin_dbc(name: str) -> Path:
    """Path of a DBC file shipped with canbridge (`dbc/NAME.dbc` in the repository)."""
    return Path(str(resources.files("canbridge.dbc").joinpath(f"{name}.dbc")))


class DbcError(ValueError):
    """A DBC file that cannot be used; the message names the file (and the line)."""


@functools.cache
def load_dbc(path: Path | str) -> cantools.database.can.Database:
    """The cantools database of one DBC file, parsed once per process; DbcError says, in one
    line naming the file, why it cannot be used."""
    try:
        return cantools.database.load_file(str(path), database_format="dbc", strict=True)
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


def dbc_problem(path: Path | str) -> str | None:
    """Why the DBC file at `path` cannot be used, in one line naming the file, or None."""
    try:
        load_dbc(path)
    except DbcError as exc:
        return str(exc)
    return None
