"""Inverter profiles: what a real inverter needs from its battery, as data.

One TOML file per profile in this folder. A profile names the inverters it is for, says in
one line what is special about them, and sets options of an inverter sink, each value with
the public source it rests on:

    inverters = "Deye, Sunsynk"
    special = "stops charging only with CVL at the pack voltage"
    confirmed_on_hardware = false

    [options.stop_charge_by]
    value = "voltage"
    source = "where this is written down in public"

A profile with nothing to set says why in `note` and behaves like `generic`. Profile values
are defaults: an option written in the pipeline file always wins.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from canbridge.documents import toml_document

GENERIC = "generic"


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Profile:
    name: str
    inverters: str
    special: str
    confirmed_on_hardware: bool
    options: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    note: str = ""


def _folder() -> Any:
    return resources.files(__name__)


@functools.cache
def names() -> tuple[str, ...]:
    """Every shipped profile's name, `generic` first (read from the file names only)."""
    found = sorted(entry.name.removesuffix(".toml") for entry in _folder().iterdir()
                   if entry.name.endswith(".toml"))
    return (GENERIC, *(name for name in found if name != GENERIC))


@functools.cache
def load(name: str) -> Profile:
    """The profile `name`; ProfileError names the file when it is not usable."""
    entry = _folder().joinpath(f"{name}.toml")
    label = f"profile file {name}.toml"
    try:
        raw = toml_document(entry.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProfileError(f"{label}: {exc}") from None
    options: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, item in raw.get("options", {}).items():
        if not (isinstance(item, dict) and "value" in item
                and isinstance(item.get("source"), str) and item["source"]):
            raise ProfileError(f"{label}: options.{key} needs a value and a public source")
        options[key] = item["value"]
        sources[key] = item["source"]
    note = raw.get("note", "")
    if not options and not note and name != GENERIC:
        raise ProfileError(f"{label}: sets nothing and gives no note saying why")
    try:
        return Profile(name=name, inverters=str(raw["inverters"]), special=str(raw["special"]),
                       confirmed_on_hardware=bool(raw["confirmed_on_hardware"]),
                       options=options, sources=sources, note=str(note))
    except KeyError as exc:
        raise ProfileError(f"{label}: missing {exc.args[0]}") from None
