"""Source `dbc-source`: a battery whose CAN frames already carry the vocabulary's meaning
needs only a DBC file and a table in the pipeline, no Python.

Every message of the DBC (or those listed in `ids`) is decoded on `bus` with the core codec;
DBC signal names that are vocabulary names map themselves, `signals` maps the others, and
signals mapped to nothing are left out. Malformed frames are skipped, counted and logged as
by every frame source. Alarms: with `alarms = "dbc"` every frame that carries a mapped
`alarm_*` or `warning_*` signal is an alarm report (a non-zero value is active); a battery
without alarm signals must say `alarms = "none"`, and then every frame that carries a limit
states so, so inverter sinks know the alarm status is not missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path as FilePath
from typing import Any

from canbridge import (
    ALARM_REPORT,
    REPORT_NONE,
    REPORT_RECEIVED,
    BusRef,
    Choice,
    Context,
    FrameSource,
    Integer,
    ListOf,
    Option,
    OptionError,
    Path,
    Table,
    Value,
    hookimpl,
    is_condition,
)
from canbridge.databases import dbc_problem, load_dbc
from canbridge.schema import did_you_mean
from canbridge.signals import VOCABULARY

LIMITS = ("charge_voltage_limit", "charge_current_limit", "discharge_current_limit",
          "discharge_voltage_limit")
EXTENDED = 0x80000000
CLASSIC_MAX_BYTES = 8


def _dbc_path(config: Mapping[str, Any]) -> FilePath:
    return FilePath(config["dbc"]).expanduser()


def _mapping(config: Mapping[str, Any], names: Iterable[str]) -> dict[str, str]:
    """DBC signal name -> vocabulary name, for the signals that are emitted."""
    given = config["signals"]
    return {name: given.get(name, name) for name in names
            if given.get(name, name) in VOCABULARY}


def _messages(config: Mapping[str, Any], path: FilePath | None = None) -> list[Any]:
    wanted = config["ids"]
    messages = load_dbc(path or _dbc_path(config)).messages
    if wanted is None:
        return list(messages)
    return [m for m in messages if _dbc_id(m) in wanted]


def _dbc_id(message: Any) -> int:
    return message.frame_id | (EXTENDED if message.is_extended_frame else 0)


class DbcSource(FrameSource):
    """Decodes the frames of a DBC into vocabulary updates, by name."""

    type_name = "dbc-source"
    summary = "decodes a battery's CAN frames from a DBC file whose signals carry vocabulary names"
    options = (
        Option("bus", BusRef(non_empty=True), help="the [buses] table the battery is on"),
        Option("dbc", Path(non_empty=True), help="the DBC file (relative to the pipeline file)"),
        Option("signals", Table(), {},
               "DBC signal name -> vocabulary name, for names that differ"),
        Option("ids", ListOf(Integer(min=0, max=EXTENDED | 0x1FFFFFFF)), None,
               "IDs of the messages to decode (unset: all); a 29-bit ID with 0x80000000 added, "
               "as DBC files write it"),
        Option("alarms", Choice(("dbc", "none")), "dbc",
               "\"dbc\": mapped alarm_*/warning_* signals are the alarm report; \"none\": this "
               "battery reports no alarms (say so explicitly)"),
    )

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[tuple[str, str] | OptionError]:
        problem = dbc_problem(_dbc_path(config))
        if problem is not None:
            yield "dbc", problem
            return
        db = load_dbc(_dbc_path(config))
        names = {s.name for m in db.messages for s in m.signals}
        for dbc_name, target in config["signals"].items():
            if dbc_name not in names:
                yield OptionError(f"signals.{dbc_name}", "no such signal in the DBC"
                                  f"{did_you_mean(dbc_name, names)}")
            if not isinstance(target, str) or target not in VOCABULARY:
                yield OptionError(f"signals.{dbc_name}", f"{target!r} is not a vocabulary "
                                  f"signal{did_you_mean(str(target), VOCABULARY)}")
        known = {_dbc_id(m) for m in db.messages}
        for frame_id in config["ids"] or ():
            if frame_id not in known:
                yield "ids", f"0x{frame_id:X} is not a message of the DBC"
        mapped = set(_mapping(config, {s.name for m in _messages(config) for s in m.signals})
                     .values())
        if not mapped:
            yield "signals", "no DBC signal maps to a vocabulary name: the source emits nothing"
        conditions = [name for name in mapped if is_condition(name)]
        if config["alarms"] == "dbc" and not conditions:
            yield "alarms", ("the DBC carries no alarm_* or warning_* signal: if this battery "
                             "reports no alarms, say alarms = \"none\" (inverter sinks never "
                             "enable charging without an alarm report)")
        if config["alarms"] == "none" and conditions:
            yield "alarms", (f"\"none\", but the DBC maps {sorted(conditions)[0]}: use "
                             "alarms = \"dbc\"")

    @classmethod
    def check_bus(cls, config: Mapping[str, Any], option: str, bus: Mapping[str, Any]
                  ) -> Iterable[tuple[str, str]]:
        if dbc_problem(_dbc_path(config)) is not None or bus["options"].get("fd"):
            return
        for message in _messages(config):
            if message.length > CLASSIC_MAX_BYTES:
                yield "dbc", (f"message {message.name} has {message.length} bytes: bus "
                              f"{config['bus']!r} is classic CAN (8 at most); set "
                              "options = {fd = true} on the bus if it is CAN FD")

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        path = _dbc_path(self.config)
        self.path = path if path.is_absolute() else FilePath(context.pipeline_dir) / path
        no_alarms = self.config["alarms"] == "none"
        for message in _messages(self.config, self.path):
            mapping = _mapping(self.config, [s.name for s in message.signals])
            report = (REPORT_NONE if no_alarms and any(n in LIMITS for n in mapping.values())
                      else REPORT_RECEIVED if any(is_condition(n) for n in mapping.values())
                      else None)
            self.add_message(message, _converter(mapping, report))


def _converter(mapping: dict[str, str], report: str | None
               ) -> Callable[[dict[str, Any]], dict[str, Value]]:
    conditions = {name for name, target in mapping.items() if is_condition(target)}

    def convert(values: dict[str, Any]) -> dict[str, Value]:
        out: dict[str, Value] = {}
        for name, target in mapping.items():
            if name in values:
                value = values[name]
                out[target] = bool(value) if name in conditions else value
        if report is not None:
            out[ALARM_REPORT] = report
        return out

    return convert


@hookimpl
def canbridge_component_types() -> list[type]:
    return [DbcSource]
