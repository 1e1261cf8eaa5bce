"""The pipeline file: load, check every problem at once, and fill in the defaults.

Problems are reported one per line as `FILE:LINE: key.path: what is wrong`, the line found
by scanning the file's table headers and keys (tomllib does not keep positions).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import can

from canbridge import schema
from canbridge.buses import options_problems
from canbridge.component import Component
from canbridge.documents import toml_document
from canbridge.locations import location_problem, outside_service, service_writable_paths
from canbridge.registry import Registry
from canbridge.replay import capture_problem
from canbridge.schema import (
    BusRef,
    Choice,
    Either,
    Flag,
    Integer,
    ListOf,
    Number,
    Option,
    OptionError,
    Path,
    Table,
    Text,
    apply_schema,
    did_you_mean,
)

REPLAY = "replay"
COMPONENT_SECTIONS = {"sources": "source", "transforms": "transform", "sinks": "sink"}

PIPELINE_OPTIONS = (
    Option("name", Text(non_empty=True), "battery",
           "name of this pipeline: MQTT node id and status label"),
)

BUS_OPTIONS = (
    Option("interface", Text(non_empty=True), schema.REQUIRED,
           'python-can interface ("socketcan", "virtual", ...) or "replay"'),
    Option("channel", Either((Text(), Integer(min=0))), None,
           'interface channel ("can0"); for "virtual", any shared name'),
    Option("bitrate", Integer(min=1000, max=1_000_000), None,
           "bit rate in bit/s where the interface sets it"),
    Option("record", Path(), None, "write every frame in and out to this file, candump -L format",
           written=True),
    Option("options", Table(), {}, "extra keyword arguments for the python-can interface"),
    Option("path", Path(), None, "replay: the capture to play (.log, .asc, .blf, .csv)"),
    Option("speed", Either((Number(min=0.0, min_exclusive=True), Choice(("max",)))), 1.0,
           'replay: 1.0 is real time; "max" plays at full speed on the capture\'s clock'),
    Option("loop", Flag(), False,
           "replay: start again at the end, one second after the last frame"),
    Option("max_replay_gap_secs", Number(min=1.0), 3600.0,
           'replay at speed "max": a jump in the capture\'s time longer than this is skipped '
           "with a warning instead of simulated"),
)
REPLAY_ONLY = ("path", "speed", "loop", "max_replay_gap_secs")

FORWARD_OPTIONS = (
    Option("from_bus", BusRef(non_empty=True), schema.REQUIRED, "bus the frames come from"),
    Option("to_bus", BusRef(non_empty=True), schema.REQUIRED, "bus the frames are copied to"),
    Option("ids", ListOf(Integer(min=0, max=0x1FFFFFFF)), [],
           "11-bit CAN IDs to copy; a frame is copied only with the width it is listed in"),
    Option("extended_ids", ListOf(Integer(min=0, max=0x1FFFFFFF)), [],
           "29-bit CAN IDs to copy (Schneider sends its 0x305 so)"),
    Option("max_per_sec", Number(min=1.0, max=10_000.0), 20.0,
           "frames copied per second at most (a flood is not passed on); the rest are dropped"),
)
MAX_STANDARD_ID = 0x7FF


def core_tables() -> dict[str, tuple[Option, ...]]:
    """Single tables of the core (`[status]`, `[log]`, ...), each with its option schema."""
    from canbridge.logs import LOG_OPTIONS
    from canbridge.status import STATUS_OPTIONS
    from canbridge.systemd import WATCHDOG_OPTIONS

    return {"pipeline": PIPELINE_OPTIONS, "status": STATUS_OPTIONS, "log": LOG_OPTIONS,
            "watchdog": WATCHDOG_OPTIONS}


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    key: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        prefix = "warning: " if self.warning else ""
        return f"{where}: {self.key}: {prefix}{self.message}"


class ConfigError(Exception):
    """The pipeline file has problems; `problems` lists every one (warnings included)."""

    def __init__(self, problems: Sequence[Problem]):
        super().__init__("\n".join(map(str, problems)))
        self.problems = list(problems)


@dataclass
class ComponentSpec:
    name: str
    section: str
    cls: type[Component]
    values: dict[str, Any]


@dataclass
class PipelineConfig:
    path: FsPath
    name: str
    buses: dict[str, dict[str, Any]]
    components: list[ComponentSpec]
    forwards: dict[str, dict[str, Any]]
    tables: dict[str, dict[str, Any]]
    warnings: list[Problem] = field(default_factory=list)

    @property
    def folder(self) -> FsPath:
        return self.path.parent

    def effective(self) -> dict[str, Any]:
        """The whole configuration with defaults filled in, as a TOML-ready dict."""
        out: dict[str, Any] = {"pipeline": _clean(self.tables["pipeline"])}
        out["buses"] = {name: _clean_bus(values) for name, values in self.buses.items()}
        for section in COMPONENT_SECTIONS:
            specs = [s for s in self.components if s.section == section]
            if specs:
                out[section] = {s.name: {"type": s.cls.type_name,
                                         **_clean(_masked(s.cls.schema(), s.values))}
                                for s in specs}
        if self.forwards:
            out["forwards"] = {name: _clean(values) for name, values in self.forwards.items()}
        for table, values in self.tables.items():
            if table != "pipeline":
                out[table] = _clean(values)
        return out


SECRET_SHOWN = "********"


def _masked(options: Sequence[Option], values: Mapping[str, Any]) -> dict[str, Any]:
    """Values with every secret option's value hidden (`canbridge config` output gets pasted
    into forums and issues)."""
    secret = {option.name for option in options if option.secret}
    return {k: SECRET_SHOWN if k in secret and v is not None else v for k, v in values.items()}


def _clean(values: Mapping[str, Any]) -> dict[str, Any]:
    """Drop unset options: TOML has no null."""
    return {k: v for k, v in values.items() if v is not None}


def _clean_bus(values: Mapping[str, Any]) -> dict[str, Any]:
    """A bus as it matters: replay options only on a replay, no empty `options` table."""
    drop = set() if values.get("interface") == REPLAY else set(REPLAY_ONLY)
    if not values.get("options"):
        drop.add("options")
    return {k: v for k, v in _clean(values).items() if k not in drop}


class LineIndex:
    """Where each table and key of a TOML file starts: (table path + key path) -> line."""

    _HEADER = re.compile(r"^\s*\[(?!\[)\s*([^\]]+?)\s*\]")
    _PART = r'(?:[A-Za-z0-9_-]+|"[^"]*")'
    _KEY = re.compile(rf"^\s*({_PART}(?:\s*\.\s*{_PART})*)\s*=")

    def __init__(self, text: str):
        self.lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            if match := self._HEADER.match(line):
                table = self._split(match.group(1))
                for end in range(1, len(table) + 1):  # [buses.x] also locates "buses"
                    self.lines.setdefault(table[:end], number)
            elif match := self._KEY.match(line):
                self.lines.setdefault(table + self._split(match.group(1)), number)

    @staticmethod
    def _split(dotted: str) -> tuple[str, ...]:
        return tuple(part.strip().strip('"') for part in re.findall(r'"[^"]*"|[^.]+', dotted))

    def find(self, *path: str) -> int | None:
        """The line of `path`, or of its nearest enclosing table."""
        for end in range(len(path), 0, -1):
            if (line := self.lines.get(tuple(path[:end]))) is not None:
                return line
        return None


class _Collector:
    def __init__(self, file: str, index: LineIndex):
        self.file = file
        self.index = index
        self.problems: list[Problem] = []

    def add(self, path: Sequence[str], message: str, *, warning: bool = False,
            line_path: Sequence[str] | None = None) -> None:
        line = self.index.find(*(line_path if line_path is not None else path))
        self.problems.append(Problem(self.file, line, ".".join(path), message, warning))

    def add_option_errors(self, table: Sequence[str], errors: list[OptionError]) -> None:
        for err in errors:
            self.add([*table, err.key], err.message, warning=err.warning)


def load_pipeline(path: str | os.PathLike[str], registry: Registry) -> PipelineConfig:
    """Read and check a pipeline file. Raises ConfigError listing every problem found."""
    file = FsPath(path)
    label = str(path)
    try:
        text = _text_of(file.read_bytes())
    except OSError as exc:
        raise ConfigError([Problem(label, None, "file", f"cannot read: {exc.strerror}")]) from None
    except ValueError as exc:
        raise ConfigError([Problem(label, None, "file", str(exc))]) from None
    try:
        raw = toml_document(text)
    except ValueError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        line = int(match.group(1)) if match else None
        raise ConfigError([Problem(label, line, "syntax", f"not valid TOML: {message}")]) from None
    out = _Collector(label, LineIndex(text))
    config = _check(raw, file.resolve(), registry, out)
    problems = sorted(out.problems, key=lambda p: p.line or 0)
    if any(not p.warning for p in problems):
        raise ConfigError(problems)
    config.warnings = problems
    return config


def _text_of(data: bytes) -> str:
    """The file's text: UTF-8, with a byte-order mark (Windows Notepad writes one) accepted;
    ValueError says what the file is instead."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError("is UTF-16 text (Windows Notepad's \"Unicode\"?): save it as UTF-8")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ValueError(f"is not UTF-8 text (byte 0x{data[exc.start]:02X} on line {line}): "
                         "save it as UTF-8") from None


def _tables(raw: Mapping[str, Any], key: str, out: _Collector) -> dict[str, dict[str, Any]]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        out.add([key], f"must be a table of named tables, like [{key}.NAME]")
        return {}
    good = {}
    for name, table in value.items():
        if isinstance(table, dict):
            good[name] = table
        else:
            out.add([key, name], f"must be a table, like [{key}.{name}]")
    return good


def _resolve_paths(options: Sequence[Option], values: dict[str, Any], folder: FsPath) -> None:
    for option in options:
        value = values.get(option.name)
        if isinstance(option.kind, Path) and isinstance(value, str) and value:
            values[option.name] = str((folder / os.path.expanduser(value)).resolve())


def _check(raw: dict[str, Any], file: FsPath, registry: Registry,
           out: _Collector) -> PipelineConfig:
    folder = file.parent
    singles = core_tables()
    known_top = set(singles) | {"buses", "forwards", *COMPONENT_SECTIONS}
    for key in raw:
        if key not in known_top:
            out.add([key], f"unknown table{did_you_mean(key, known_top)}")

    tables: dict[str, dict[str, Any]] = {}
    for table, options in singles.items():
        given = raw.get(table, {})
        if not isinstance(given, dict):
            out.add([table], f"must be a table, like [{table}]")
            given = {}
        values, errors = apply_schema(options, given)
        out.add_option_errors([table], errors)
        _resolve_paths(options, values, folder)
        _check_written(options, values, [table], out)
        tables[table] = values

    buses = _check_buses(_tables(raw, "buses", out), folder, out)
    sections = {section: _tables(raw, section, out) for section in COMPONENT_SECTIONS}
    raw_tables = {name: table for tables in sections.values() for name, table in tables.items()}
    components, declared = _check_components(sections, registry, folder, out)
    forwards = _check_forwards(_tables(raw, "forwards", out), buses, out)
    _check_graph(components, raw_tables, declared, buses, out)
    _check_forwarded_ids(forwards, components, out)
    _check_unused_buses(buses, components, forwards, out)
    if not components:
        out.add(["sources"], "the pipeline has no components: add at least one source and sink",
                warning=True)
    return PipelineConfig(file, tables["pipeline"]["name"], buses, components, forwards, tables)


def _check_written(options: Sequence[Option], values: Mapping[str, Any], path: Sequence[str],
                   out: _Collector) -> None:
    """Every file canbridge would write: a warning when it cannot be written, or when the
    installed service may not write there. Never an error: the bridge runs without it."""
    service = service_writable_paths()
    for option in options:
        value = values.get(option.name)
        if not option.written or not isinstance(value, str) or not value:
            continue
        target = FsPath(value)
        problem = location_problem(target)
        if problem is not None:
            out.add([*path, option.name], f"{problem}: this feature will not work, the "
                    "bridge runs without it", warning=True)
        elif service is not None and outside_service(target, service):
            shown = " ".join(str(p) for p in service)
            out.add([*path, option.name], f"{target} is outside the service's "
                    f"ReadWritePaths ({shown}): canbridge.service cannot write it",
                    warning=True)


def _check_buses(given: dict[str, dict[str, Any]], folder: FsPath,
                 out: _Collector) -> dict[str, dict[str, Any]]:
    buses = {}
    known_interfaces = {*can.interfaces.BACKENDS, REPLAY}
    max_speed: list[str] = []
    other_speed: list[str] = []
    for name, table in given.items():
        values, errors = apply_schema(BUS_OPTIONS, table)
        out.add_option_errors(["buses", name], errors)
        interface = values.get("interface")
        if isinstance(interface, str) and interface not in known_interfaces:
            out.add(["buses", name, "interface"], f"unknown python-can interface \"{interface}\""
                    f"{did_you_mean(interface, known_interfaces)}")
        if interface == REPLAY:
            if "path" not in table:
                out.add(["buses", name, "path"], 'a "replay" bus needs the capture file to play')
            (max_speed if values.get("speed") == "max" else other_speed).append(name)
        else:
            for key in REPLAY_ONLY:
                if key in table:
                    out.add(["buses", name, key], 'only a bus with interface = "replay" takes this')
            if isinstance(interface, str) and interface in known_interfaces and values.get(
                    "options"):
                for key, problem, warning in options_problems(interface, values["options"]):
                    out.add(["buses", name, "options", key], problem, warning=warning)
        _resolve_paths(BUS_OPTIONS, values, folder)
        _check_written(BUS_OPTIONS, values, ["buses", name], out)
        if interface == REPLAY and values.get("path"):
            if not os.path.isfile(values["path"]):
                out.add(["buses", name, "path"], f"no such capture file: {values['path']}")
            elif (problem := capture_problem(values["path"])) is not None:
                out.add(["buses", name, "path"], problem)
        buses[name] = values
    if max_speed and other_speed:
        out.add(["buses", other_speed[0], "speed"],
                f'replay bus "{max_speed[0]}" plays at speed "max" on the capture\'s clock, so '
                'every replay bus must use speed "max"')
    return buses


def _check_components(sections: dict[str, dict[str, dict[str, Any]]], registry: Registry,
                      folder: FsPath, out: _Collector
                      ) -> tuple[list[ComponentSpec], dict[str, str]]:
    """The components that passed their own checks, and every declared name -> section."""
    specs: list[ComponentSpec] = []
    seen: dict[str, str] = {}
    for section, kind in COMPONENT_SECTIONS.items():
        for name, table in sections[section].items():
            path = [section, name]
            if name in seen:
                out.add(path, f"the name \"{name}\" is already used in [{seen[name]}]; "
                        "component names must be unique")
                continue
            seen[name] = section
            type_name = table.get("type")
            if not isinstance(type_name, str):
                out.add([*path, "type"], "missing the component type (type = \"...\")"
                        if type_name is None else "expected a string")
                continue
            cls = registry.types.get(type_name)
            if cls is None:
                known = [t for t, c in registry.types.items() if c.kind == kind]
                out.add([*path, "type"], f"unknown {kind} type \"{type_name}\""
                        f"{did_you_mean(type_name, known)}")
                continue
            if cls.kind != kind:
                out.add([*path, "type"], f"\"{type_name}\" is a {cls.kind}, not a {kind}: "
                        f"move it to [{_section_of(cls.kind)}.{name}]")
                continue
            options = cls.schema()
            given = {k: v for k, v in table.items() if k != "type"}
            values, errors = apply_schema(options, given, presets=cls.presets(given))
            out.add_option_errors(path, errors)
            _resolve_paths(options, values, folder)
            if not errors:
                _check_written(options, values, path, out)
                try:
                    for problem in cls.check(values):
                        if isinstance(problem, OptionError):
                            out.add([*path, problem.key], problem.message,
                                    warning=problem.warning)
                        else:
                            out.add([*path, problem[0]], problem[1])
                except Exception as exc:  # a plugin's own check must not crash validation
                    out.add(path, f"the \"{type_name}\" plugin failed to check its options: "
                            f"{exc!r}")
            specs.append(ComponentSpec(name, section, cls, values))
    return specs, seen


def _section_of(kind: str) -> str:
    return next(section for section, k in COMPONENT_SECTIONS.items() if k == kind)


def _check_forwards(given: dict[str, dict[str, Any]], buses: dict[str, dict[str, Any]],
                    out: _Collector) -> dict[str, dict[str, Any]]:
    forwards = {}
    for name, table in given.items():
        values, errors = apply_schema(FORWARD_OPTIONS, table)
        out.add_option_errors(["forwards", name], errors)
        for key in ("from_bus", "to_bus"):
            bus = values.get(key)
            if isinstance(bus, str) and bus not in buses:
                out.add(["forwards", name, key], _no_bus(bus, buses))
        if values.get("from_bus") is not None and values.get("from_bus") == values.get("to_bus"):
            out.add(["forwards", name, "to_bus"], "is the same bus as from_bus")
        wide = [i for i in values.get("ids") or () if i > MAX_STANDARD_ID]
        if wide:
            listed = ", ".join(f"0x{i:X}" for i in wide)
            out.add(["forwards", name, "ids"], f"{listed} is not an 11-bit ID (<= 0x7FF): "
                    "list 29-bit IDs in extended_ids")
        if not errors and not values["ids"] and not values["extended_ids"]:
            out.add(["forwards", name, "ids"], "give the IDs to copy in ids (11-bit) or "
                    "extended_ids (29-bit)")
        forwards[name] = values
    return forwards


def _check_forwarded_ids(forwards: dict[str, dict[str, Any]], specs: list[ComponentSpec],
                         out: _Collector) -> None:
    for name, values in forwards.items():
        for key in ("ids", "extended_ids"):  # an ID another node owns is refused in either width
            ids = set(values.get(key) or ())
            for spec in specs:
                owned = sorted(ids & spec.cls.foreign_ids)
                if owned and spec.values.get("bus") == values.get("to_bus"):
                    listed = ", ".join(f"0x{i:03X}" for i in owned)
                    out.add(["forwards", name, key],
                            f"{listed} belongs to another node on bus \"{values['to_bus']}\" "
                            f"(says the {spec.cls.type_name} component \"{spec.name}\"): "
                            "canbridge must never transmit it there")


def _no_bus(bus: str, buses: Mapping[str, Any]) -> str:
    return f"no bus named \"{bus}\" (declare [buses.{bus}]){did_you_mean(bus, buses)}"


def _check_graph(specs: list[ComponentSpec], raw_tables: Mapping[str, dict[str, Any]],
                 declared: Mapping[str, str], buses: Mapping[str, Any], out: _Collector) -> None:
    by_name = {spec.name: spec for spec in specs}
    for spec in specs:
        path = [spec.section, spec.name]
        for option in spec.cls.schema():
            value = spec.values.get(option.name)
            if not isinstance(option.kind, BusRef) or not isinstance(value, str):
                continue
            if value not in buses:
                out.add([*path, option.name], _no_bus(value, buses))
                continue
            try:
                for problem in spec.cls.check_bus(spec.values, option.name, buses[value]):
                    if isinstance(problem, OptionError):
                        out.add([*path, problem.key], problem.message, warning=problem.warning)
                    else:
                        out.add([*path, problem[0]], problem[1])
            except Exception as exc:  # a plugin's own check must not crash validation
                out.add(path, f"the \"{spec.cls.type_name}\" plugin failed to check its bus: "
                        f"{exc!r}")
        for source in spec.values.get("inputs") or ():
            section = declared.get(source)
            if section is None:
                out.add([*path, "inputs"], f"names nothing: no source or transform called "
                        f"\"{source}\"{did_you_mean(source, declared)}")
            elif section == "sinks":
                out.add([*path, "inputs"], f"\"{source}\" is a sink: sinks produce no updates")
            elif source == spec.name:
                out.add([*path, "inputs"], "a component cannot take its own output")
    _check_cycles(specs, by_name, out)
    _check_current_shares(specs, by_name, out)
    _check_bus_use(specs, buses, out)
    # Judged on what the file says, so a component with a bad option does not also make
    # its inputs look unused.
    consumed = {name for table in raw_tables.values()
                for name in (table.get("inputs") if isinstance(table.get("inputs"), list) else ())
                if isinstance(name, str)}
    for name, section in declared.items():
        if section != "sinks" and name not in consumed:
            out.add([section, name], "nothing takes this component's updates "
                    "(no sink or transform lists it in inputs)", warning=True)


def _check_bus_use(specs: list[ComponentSpec], buses: Mapping[str, Any],
                   out: _Collector) -> None:
    """Wiring mistakes: a sink sending where a source reads, two tables for one CAN
    channel."""
    reads = [(spec, spec.cls.frame_ids(spec.values)[0]) for spec in specs
             if spec.section == "sources" and isinstance(spec.values.get("bus"), str)]
    for spec in specs:
        bus = spec.values.get("bus")
        if spec.section != "sinks" or not isinstance(bus, str):
            continue
        sent = spec.cls.frame_ids(spec.values)[1]
        for source, read in reads:
            both = sorted(sent & read)
            if source.values["bus"] == bus and both:
                out.add([spec.section, spec.name, "bus"],
                        f"the {spec.cls.type_name} sink would send "
                        f"{', '.join(f'0x{i:03X}' for i in both)} on bus \"{bus}\", where the "
                        f"{source.cls.type_name} source \"{source.name}\" reads them: give "
                        "it the inverter's bus")
    owners: dict[tuple[str, str], str] = {}
    for name, values in buses.items():
        if values.get("interface") == REPLAY:
            continue
        # Without a channel python-can opens the interface's default one, the same for both.
        channel = values.get("channel")
        key = (str(values.get("interface")),
               "(its default channel)" if channel is None else str(channel))
        if key in owners:
            out.add(["buses", name, "channel"],
                    f"bus \"{owners[key]}\" is {key[0]} {key[1]} already: two tables for one "
                    "channel would hear each other's frames (swap or fix the channel)")
        owners.setdefault(key, name)


def _check_unused_buses(buses: Mapping[str, Any], specs: list[ComponentSpec],
                        forwards: Mapping[str, Mapping[str, Any]], out: _Collector) -> None:
    used = {value for spec in specs for option in spec.cls.schema()
            if isinstance(option.kind, BusRef) and isinstance(value := spec.values.get(
                option.name), str)}
    used |= {values.get(key) for values in forwards.values() for key in ("from_bus", "to_bus")}
    for name in buses:
        if name not in used:
            out.add(["buses", name], "no component or forward uses this bus", warning=True)


def _check_current_shares(specs: list[ComponentSpec], by_name: dict[str, ComponentSpec],
                          out: _Collector) -> None:
    """Inverters fed by one battery may together take at most its limits: warn when their
    `current_share`s add up to more than 1."""
    def sources(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        spec = by_name.get(name)
        if spec is None or name in seen:
            return set()
        inputs = spec.values.get("inputs")
        if not inputs:
            return {name}
        return {root for source in inputs for root in sources(source, seen | {name})}

    shares: dict[str, list[ComponentSpec]] = {}
    for spec in specs:
        if spec.section == "sinks" and "current_share" in spec.values:
            for root in sources(spec.name):
                shares.setdefault(root, []).append(spec)
    for root, sinks in shares.items():
        total = sum(spec.values["current_share"] for spec in sinks)
        if len(sinks) > 1 and total > 1.0 + 1e-9:
            names = ", ".join(f"{s.name} {s.values['current_share']:g}" for s in sinks)
            out.add([sinks[-1].section, sinks[-1].name, "current_share"],
                    f"the inverters fed by {root!r} take {total:g} of its current limits "
                    f"together ({names}): more than the battery allows", warning=True)


def _check_cycles(specs: list[ComponentSpec], by_name: dict[str, ComponentSpec],
                  out: _Collector) -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for source in by_name[name].values.get("inputs") or ():
            if source not in by_name or source == name:
                continue
            if state.get(source) == 1:
                # Updates flow from an input to the component that lists it.
                flow = [source, *reversed(trail[trail.index(source) + 1:]), source]
                spec = by_name[name]
                out.add([spec.section, name, "inputs"], "cycle: " + " -> ".join(flow))
            elif state.get(source) is None:
                visit(source, [*trail, source])
        state[name] = 2

    for spec in specs:
        if spec.name not in state:
            visit(spec.name, [spec.name])


def topological_order(specs: list[ComponentSpec]) -> list[ComponentSpec]:
    """Components ordered so every one comes after all of its inputs."""
    by_name = {spec.name: spec for spec in specs}
    ordered: list[ComponentSpec] = []
    seen: set[str] = set()

    def visit(spec: ComponentSpec) -> None:
        if spec.name in seen:
            return
        seen.add(spec.name)
        for source in spec.values.get("inputs") or ():
            visit(by_name[source])
        ordered.append(spec)

    for spec in specs:
        visit(spec)
    return ordered
