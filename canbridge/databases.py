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


@functools.cache
def load_dbc(path: Path | str) -> cantools.database.can.Database:
    """The cantools database of one DBC file, parsed once per process."""
    return cantools.database.load_file(str(path), database_format="dbc", strict=True)


def dbc_problem(path: Path | str) -> str | None:
    """Why the DBC file at `path` cannot be used, in one line naming the file (and the line
    of a syntax error), or None when it loads."""
    try:
        load_dbc(path)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    except Exception as exc:  # cantools raises several kinds for a bad file
        text = str(exc)
        found = re.search(r"line (\d+), column (\d+): (.*)", text, re.S)
        if found:
            line, column, rest = found.groups()
            near = rest.strip().strip('"').strip()
            return f"{path}:{line}: not a valid DBC file (column {column}: {near})"
        return f"{path}: not a valid DBC file ({text})"
    return None
