"""Plugin hooks (pluggy). Pluggy is for discovery and registration, never per frame.

A plugin is a module named by an entry point in the `canbridge.plugins` group that
implements some of these hooks with `@canbridge.hookimpl`. The built-in plugins register
the same way.
"""

from __future__ import annotations

from pathlib import Path

import pluggy

PROJECT = "canbridge"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Hooks:
    @hookspec
    def canbridge_component_types(self) -> list[type]:
        """Return the component classes (Source, Transform or Sink subclasses) provided."""

    @hookspec
    def canbridge_dbc_files(self) -> list[Path]:
        """Return the DBC files the plugin's protocols are described in."""
