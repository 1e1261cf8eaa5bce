"""Sink `console`: a compact live table of the latest signal values, for a person watching.

On a terminal the table is redrawn in place; piped or logged, one line per refresh. A thread
of the sink's own writes it: a terminal that stops reading (Ctrl-S, a stalled SSH link) never
holds up the engine, and only the newest table waits meanwhile.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from canbridge import Flag, ListOf, Number, Option, Sink, Text, hookimpl
from canbridge.clock import SIDE_SLACK_SECS
from canbridge.schema import OptionError
from canbridge.signals import unknown_signal_warnings
from canbridge.writer import BackgroundWriter

STOP_FLUSH_SECS = 1.0
"""How long the stop waits for the last table to be written."""

# What a person looks at first; everything else follows alphabetically.
_FIRST = ("soc", "soc_reported", "voltage", "current", "temperature", "charge_voltage_limit",
          "charge_current_limit", "discharge_current_limit", "discharge_voltage_limit")
_UNITS = {"voltage": "V", "current": "A", "temperature": "°C", "soc": "%", "soc_reported": "%",
          "soh": "%", "charge_voltage_limit": "V", "discharge_voltage_limit": "V",
          "charge_current_limit": "A", "discharge_current_limit": "A",
          "capacity_nominal": "Ah", "capacity_remaining": "Ah", "balancing_remaining": "s"}


class ConsoleSink(Sink):
    type_name = "console"
    summary = "print a compact live table of the latest signal values"
    options = (
        Option("every_secs", Number(min=0.1, max=3600), 2.0, "seconds between refreshes"),
        Option("signals", ListOf(Text(non_empty=True)), [],
               "signals to show (empty: every signal seen)"),
        Option("alarms", Flag(), True, "list active alarms and warnings"),
    )

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[OptionError]:
        return unknown_signal_warnings("signals", config["signals"])

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.stream: TextIO = sys.stdout
        self.latest = self.context.latest
        self.refreshes = 0
        self._out = BackgroundWriter()

    def start(self) -> None:
        self.clock.every(self.config["every_secs"], self.refresh, slack=SIDE_SLACK_SECS)

    def stop(self) -> None:
        self.refresh()
        self._out.flush(STOP_FLUSH_SECS)

    def render(self) -> list[str]:
        """The lines of one refresh."""
        latest = self.latest
        chosen = self.config["signals"] or [
            *[n for n in _FIRST if n in latest],
            *sorted(n for n in latest if n not in _FIRST and not _is_flag_name(n))]
        cells = [f"{name} {_format(latest.get(name))}{_UNITS.get(name, '')}"
                 for name in chosen if name in latest]
        lines = ["  ".join(cells) if cells else "waiting for data"]
        if self.config["alarms"]:
            active = sorted(n for n in latest if _is_flag_name(n) and latest.get(n) is True)
            lines.append("active: " + ", ".join(active) if active else "no alarms or warnings")
        return lines

    def refresh(self) -> None:
        self.refreshes += 1
        lines = self.render()
        stamp = f"[{self.clock.now():.1f}] " if self.clock.virtual else ""
        self._out.submit("table", lambda: self._write(stamp, lines), self._failed)

    def _write(self, stamp: str, lines: list[str]) -> None:
        """On the writer thread."""
        if self.stream.isatty():
            # Home, clear to end of screen: redraw in place without scrolling.
            self.stream.write("\x1b[H\x1b[J" + "\n".join(lines) + "\n")
        else:
            self.stream.write(stamp + " | ".join(lines) + "\n")
        self.stream.flush()

    def _failed(self, exc: OSError) -> None:
        self.errors += 1  # a closed terminal: nothing to tell it

    def status(self) -> dict[str, Any]:
        return {"state": "ok", "errors": self.errors, "refreshes": self.refreshes,
                "signals": len(self.latest)}


def _is_flag_name(name: str) -> bool:
    return name.startswith(("alarm_", "warning_"))


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@hookimpl
def canbridge_component_types() -> list[type]:
    return [ConsoleSink]
