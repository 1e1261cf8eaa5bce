"""TOML and JSON text that may be bad (a file, a command): every way it can be bad is one
ValueError, so a caller that reports bad input never misses one.

Both parsers recurse: text nested a few thousand levels deep (`[[[[...`) raises
RecursionError, which is not a decoding error and would otherwise escape as a crash.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

NESTED_TOO_DEEPLY = "nested too deeply"


def toml_document(text: str) -> dict[str, Any]:
    """The TOML document in `text`; ValueError (tomllib's, with its line) when it is none."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ValueError(NESTED_TOO_DEEPLY) from None


def json_document(text: str) -> Any:
    """The JSON value in `text`; ValueError (json's, with its position) when it is none."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(NESTED_TOO_DEEPLY) from None
