"""Option schemas: every component type declares its options here, once.

Validation, `canbridge config`, `canbridge plugins` and the README option tables all derive
from these declarations, so a default or a range is written in exactly one place.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of an option the user must give."""

UNSET: Any = None
"""Default of an optional option that is simply absent (a cap nobody set, say)."""


class Kind:
    """A value type: checks and normalises one TOML value."""

    name = "value"

    def check(self, value: Any) -> Any:
        """Return the normalised value, or raise ValueError saying what is wrong."""
        return value

    def describe(self) -> str:
        return self.name


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _fmt(number: float) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


@dataclass(frozen=True)
class Number(Kind):
    """An int or float, optionally bounded; `min_exclusive` for "> 0" style limits."""

    min: float | None = None
    max: float | None = None
    integer: bool = False
    min_exclusive: bool = False

    @property
    def name(self) -> str:  # type: ignore[override]
        return "integer" if self.integer else "number"

    def check(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected {'an integer' if self.integer else 'a number'}, "
                             f"got {_type_name(value)}")
        if self.integer and not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        if self.min is not None and (value <= self.min if self.min_exclusive else value < self.min):
            raise ValueError(f"{_fmt(value)} is out of range ({self._range()})")
        if self.max is not None and value > self.max:
            raise ValueError(f"{_fmt(value)} is out of range ({self._range()})")
        return value if self.integer else float(value)

    def _range(self) -> str:
        low = None if self.min is None else ("> " if self.min_exclusive else ">= ") + _fmt(self.min)
        high = None if self.max is None else "<= " + _fmt(self.max)
        return ", ".join(part for part in (low, high) if part) or "any"

    def describe(self) -> str:
        bounds = self._range()
        return self.name if bounds == "any" else f"{self.name}, {bounds}"


def Integer(min: float | None = None, max: float | None = None) -> Number:
    return Number(min=min, max=max, integer=True)


@dataclass(frozen=True)
class Text(Kind):
    """A string, optionally limited in length or to ASCII."""

    max_length: int | None = None
    ascii: bool = False
    non_empty: bool = False
    name = "string"

    def check(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_type_name(value)}")
        if self.non_empty and not value:
            raise ValueError("must not be empty")
        if self.ascii and not value.isascii():
            raise ValueError(f"{value!r} is not plain ASCII")
        if self.max_length is not None and len(value) > self.max_length:
            raise ValueError(f"{value!r} is longer than {self.max_length} characters")
        return value

    def describe(self) -> str:
        parts = ["ASCII string" if self.ascii else "string"]
        if self.max_length is not None:
            parts.append(f"at most {self.max_length} characters")
        return ", ".join(parts)


@dataclass(frozen=True)
class Path(Text):
    """A file path; relative paths are taken from the pipeline file's folder."""

    name = "path"

    def describe(self) -> str:
        return "path"


@dataclass(frozen=True)
class Flag(Kind):
    name = "boolean"

    def check(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_type_name(value)}")
        return value


@dataclass(frozen=True)
class Choice(Kind):
    choices: tuple[Any, ...] = ()
    name = "choice"

    def check(self, value: Any) -> Any:
        if value not in self.choices:
            hint = did_you_mean(str(value), [str(c) for c in self.choices])
            raise ValueError(f"{value!r} is not one of {self._list()}{hint}")
        return value

    def _list(self) -> str:
        return ", ".join(repr(c).replace("'", '"') for c in self.choices)

    def describe(self) -> str:
        return f"one of {self._list()}"


@dataclass(frozen=True)
class Either(Kind):
    """The first kind that accepts the value wins (a number or "max", say)."""

    kinds: tuple[Kind, ...] = ()
    name = "either"

    def check(self, value: Any) -> Any:
        errors = []
        for kind in self.kinds:
            try:
                return kind.check(value)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(" or ".join(dict.fromkeys(errors)))

    def describe(self) -> str:
        return " or ".join(kind.describe() for kind in self.kinds)


@dataclass(frozen=True)
class ListOf(Kind):
    item: Kind = field(default_factory=Kind)
    non_empty: bool = False
    name = "list"

    def check(self, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {_type_name(value)}")
        if self.non_empty and not value:
            raise ValueError("must not be empty")
        out = []
        for index, item in enumerate(value):
            try:
                out.append(self.item.check(item))
            except ValueError as exc:
                raise ValueError(f"item {index + 1}: {exc}") from None
        return out

    def describe(self) -> str:
        return f"list of {self.item.describe()}"


@dataclass(frozen=True)
class Table(Kind):
    """A free-form table passed through (interface-specific python-can arguments, say)."""

    name = "table"

    def check(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"expected a table, got {_type_name(value)}")
        return value


@dataclass(frozen=True)
class BusRef(Text):
    """The name of a `[buses.NAME]` table; the graph check verifies it exists."""

    name = "bus"

    def describe(self) -> str:
        return "name of a [buses] table"


@dataclass(frozen=True)
class Inputs(ListOf):
    """Names of the sources or transforms whose updates a component receives."""

    name = "inputs"

    def describe(self) -> str:
        return "list of source or transform names"


@dataclass(frozen=True)
class Option:
    """One option of a component, bus or table: its kind, default and a one-line help."""

    name: str
    kind: Kind
    default: Any = REQUIRED
    help: str = ""
    secret: bool = False
    """Never shown by `canbridge config` (a password)."""
    written: bool = False
    """A file canbridge writes: `validate` checks the location (a warning, never an error:
    the bridge runs without it)."""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


class OptionError(ValueError):
    """One problem with one key: `key` is relative to the table being checked."""

    def __init__(self, key: str, message: str, *, warning: bool = False):
        super().__init__(message)
        self.key = key
        self.message = message
        self.warning = warning


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ` (did you mean "x"?)` suffix for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)".replace("'", '"') if close else ""


def apply_schema(
    options: Sequence[Option], table: Mapping[str, Any], *, ignore: Iterable[str] = (),
    presets: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[OptionError]]:
    """Check `table` against `options`: every problem at once, and the values with defaults.

    `presets` (a profile's values, say) replace the schema's defaults; an option given in
    `table` always wins over both."""
    presets = presets or {}
    known = {option.name: option for option in options}
    skip = set(ignore)
    values: dict[str, Any] = {}
    problems: list[OptionError] = []
    for key in table:
        if key not in known and key not in skip:
            hint = did_you_mean(key, list(known))
            problems.append(OptionError(key, f"unknown option{hint}"))
    for option in options:
        if option.name in table:
            try:
                values[option.name] = option.kind.check(table[option.name])
            except ValueError as exc:
                problems.append(OptionError(option.name, str(exc)))
        elif option.name in presets:
            try:
                values[option.name] = option.kind.check(presets[option.name])
            except ValueError as exc:
                problems.append(OptionError(option.name, f"preset value: {exc}"))
        elif option.required:
            problems.append(OptionError(option.name, "missing required option"))
        else:
            values[option.name] = option.default
    return values, problems


def describe_default(option: Option) -> str:
    """How a default reads in docs and `canbridge plugins`."""
    if option.required:
        return "required"
    if option.default is None:
        return "unset"
    if isinstance(option.default, bool):
        return "true" if option.default else "false"
    if isinstance(option.default, str):
        return f'"{option.default}"'
    if isinstance(option.default, list):
        return "[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v)
                               for v in option.default) + "]"
    return _fmt(option.default)
