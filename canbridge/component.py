"""The component contract: sources, transforms and sinks.

A component type is a class with a `type_name`, a one-line `summary` and an `options`
schema. The engine builds one instance per table of the pipeline file, calls `start()`,
then plain methods per event: `on_frame` for frames on its bus, `on_update` for signal
updates from its inputs, timers it set on `context.clock`. `context.latest` holds the latest
values of its inputs, kept by the core: a sink that only reads values at its own timers
needs no `on_update` at all. `stop()` flushes; `status()` reports health. Everything runs on
the engine thread, so a component needs no locks unless it starts threads of its own.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from canbridge.controls import ControlBoard
from canbridge.schema import Inputs, Option, OptionError, Text
from canbridge.signals import TimedValues, Update

if TYPE_CHECKING:
    import can

    from canbridge.buses import BusHandle
    from canbridge.clock import Clock


class RateLimitedLog:
    """A logger that says a repetitive thing at most once per `interval` per key.

    Intervals are pipeline-clock seconds, so a fast replay logs as sparsely as live would.
    """

    def __init__(self, logger: logging.Logger, clock: Clock, interval: float = 60.0):
        self.logger = logger
        self.clock = clock
        self.interval = interval
        self._last: dict[Any, float] = {}
        self._suppressed: dict[Any, int] = {}

    def log(self, level: int, key: Any, message: str, *args: Any) -> None:
        now = self.clock.now()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            message += f" ({skipped} more since last report)"
        self.logger.log(level, message, *args)

    def warning(self, key: Any, message: str, *args: Any) -> None:
        self.log(logging.WARNING, key, message, *args)

    def error(self, key: Any, message: str, *args: Any) -> None:
        self.log(logging.ERROR, key, message, *args)


def _call_now(function: Callable[[], None]) -> None:
    function()


@dataclass
class Context:
    """What the engine gives a component: the clock, its buses, logging and pipeline facts."""

    name: str
    clock: Clock
    log: logging.Logger
    buses: Mapping[str, BusHandle] = field(default_factory=dict)
    dry_run: bool = False
    pipeline_name: str = "battery"
    pipeline_dir: str = "."
    health: Callable[[], dict[str, dict[str, Any]]] = dict
    pipeline_status: Callable[[], dict[str, Any]] = dict
    """The whole status document (components, buses, engine), as `canbridge status` reads."""
    controls: ControlBoard = field(default_factory=ControlBoard)
    post: Callable[[Callable[[], None]], None] = _call_now
    """Run a function on the engine thread soon; safe from any thread (commands from MQTT).
    Outside an engine (tests), it runs at once."""
    inputs_view: Callable[[], TimedValues] = TimedValues
    """Makes `latest`: an engine gives every component with the same inputs the same one."""
    limited: RateLimitedLog = field(init=False)

    def __post_init__(self) -> None:
        self.limited = RateLimitedLog(self.log, self.clock)

    @functools.cached_property
    def latest(self) -> TimedValues:
        """The latest values (and their update times) arriving at the component's inputs,
        kept by the core: each update is applied once, before any component's `on_update`,
        however many components read it. It holds what arrived since it was first asked
        for, so ask in `__init__`. Outside an engine, `canbridge.testing.feed` keeps it."""
        return self.inputs_view()

    def bus(self, name: str) -> BusHandle:
        return self.buses[name]


class Component:
    """Base of every component type."""

    kind: ClassVar[str] = "component"
    type_name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    foreign_ids: ClassVar[frozenset[int]] = frozenset()
    """CAN IDs another node owns on this component's `bus`: canbridge must never transmit
    them there (a `[forwards]` table that would is refused)."""
    reads: frozenset[str] | None = None
    """The signal names `on_update` looks at, for a component that ignores updates without
    any of them: it is then handed only updates carrying one of them, and a transform's other
    updates pass it by, exactly as if it had emitted them unchanged (most updates, for a
    filter of one signal). None: every update. Set it in `__init__` when it depends on the
    options."""

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        self.name = name
        self.config = dict(config)
        self.context = context
        self.clock = context.clock
        self.log = context.log
        self.errors = 0
        self._emit: Callable[[Update], None] = _drop

    @classmethod
    def schema(cls) -> tuple[Option, ...]:
        """Every option of this type, the common ones (`inputs`) included."""
        return cls.options

    @classmethod
    def presets(cls, table: Mapping[str, Any]) -> Mapping[str, Any]:
        """Defaults that depend on the table as written (an inverter profile, say): they
        replace the schema's defaults, and an option set in the table wins over them.
        Called before any option is checked, so it must accept anything."""
        return {}

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[tuple[str, str] | OptionError]:
        """Checks across options, after each passed its own: (key, problem) pairs, or an
        `OptionError(key, message, warning=True)` for something allowed but unwise."""
        return ()

    @classmethod
    def frame_ids(cls, config: Mapping[str, Any]) -> tuple[frozenset[int], frozenset[int]]:
        """The CAN IDs this component reads and sends on its `bus` (what it knows of them):
        `validate` refuses a sink that would send frames a source on the same bus reads."""
        return frozenset(), frozenset()

    @classmethod
    def check_bus(cls, config: Mapping[str, Any], option: str, bus: Mapping[str, Any]
                  ) -> Iterable[tuple[str, str] | OptionError]:
        """Checks of this component against the bus its option `option` names (the bus's
        options, defaults filled in), once the whole file is read."""
        return ()

    @staticmethod
    def bitrate_warnings(option: str, bus_name: str, bus: Mapping[str, Any], expected: int,
                         who_talks: str) -> Iterable[OptionError]:
        """For `check_bus`: a warning when the bus is set to another bit rate than the one
        the device on it uses (some setups differ, so never an error)."""
        bitrate = bus.get("bitrate")
        if bitrate is not None and bitrate != expected:
            yield OptionError(option, f"bus {bus_name!r} runs at {bitrate} bit/s; "
                              f"{who_talks} at {expected}", warning=True)

    def start(self) -> None:
        """Called once on the engine thread before the first event; set timers here."""

    def stop(self) -> None:
        """Called once at the end: flush what is buffered, close what is open."""

    def on_frame(self, msg: can.Message) -> None:
        """A frame arrived on this component's `bus` (timestamp on the pipeline clock)."""

    def on_update(self, update: Update) -> None:
        """A signal update arrived from one of this component's `inputs`."""

    def emit(self, update: Update) -> None:
        """Hand an update to every component that lists this one in its `inputs`."""
        self._emit(update)

    def status(self) -> dict[str, Any]:
        """Health for `canbridge status` and MQTT: counters, state, ages (JSON values)."""
        return {"state": "ok", "errors": self.errors}

    def age(self, timestamp: float | None) -> float | None:
        """Seconds since `timestamp` on the pipeline clock, rounded for display."""
        return None if timestamp is None else round(self.clock.now() - timestamp, 3)


def _drop(update: Update) -> None:
    del update


def update_handler(component: Component) -> Callable[[Update], None]:
    """What handing `component` an update does: its `on_update`, or, for an update with none
    of the names it `reads`, nothing for a sink and passing it on unchanged for a transform.
    The engine and `canbridge.testing.feed` both hand updates over through it."""
    on_update, reads = component.on_update, component.reads
    if reads is None:
        return on_update
    passes = component.kind == Transform.kind

    def handle(update: Update) -> None:
        if not reads.isdisjoint(update.values):
            on_update(update)
        elif passes:
            component._emit(update)  # looked up now: the engine wires it after building

    return handle


INPUTS_OPTION = Option("inputs", Inputs(item=Text(non_empty=True), non_empty=True),
                       help="names of the sources or transforms this one receives updates from")


class Source(Component):
    """Turns frames (or anything else) into signal updates with `emit`."""

    kind = "source"


class Transform(Component):
    """Receives updates from its `inputs`, emits (changed) updates."""

    kind = "transform"

    @classmethod
    def schema(cls) -> tuple[Option, ...]:
        return (INPUTS_OPTION, *cls.options)


class Sink(Component):
    """Receives updates from its `inputs` and sends them somewhere: a bus, MQTT, a file."""

    kind = "sink"

    @classmethod
    def schema(cls) -> tuple[Option, ...]:
        return (INPUTS_OPTION, *cls.options)
