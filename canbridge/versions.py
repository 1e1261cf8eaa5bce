"""Versions of installed distributions, read from the first lines of their metadata.

`importlib.metadata`'s `version` parses the whole METADATA file with the email parser: about
1 ms each, which the plugin cache's check (one per entry point) and the DBC layout cache's
key would pay at every start.
"""

from __future__ import annotations

import functools
import re
from importlib.metadata import Distribution, PackageNotFoundError, distribution

_VERSION = re.compile(r"^Version:[ \t]*(\S+)", re.M)


@functools.cache
def dist_version(dist: Distribution | None) -> str:
    """The distribution's version, or "?" when it has none (or there is no distribution)."""
    if dist is None:
        return "?"
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    found = _VERSION.search(text)
    return found.group(1) if found else "?"


def package_version(name: str) -> str:
    """The version of the installed distribution `name`, or "?"."""
    try:
        return dist_version(distribution(name))
    except PackageNotFoundError:
        return "?"
