"""DBC databases, loaded once with cantools and shared by everything that needs them."""

from __future__ import annotations

import functools
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
