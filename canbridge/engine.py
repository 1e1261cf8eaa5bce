"""The engine: builds a pipeline from its checked configuration and runs it.

One thread (the one calling `Engine.run`) owns all pipeline state. Bus reader threads hand
frames to it through a queue; at `speed = "max"` it pulls replayed frames itself and moves
the virtual clock along their timestamps, firing every timer that falls due on the way.
The per-frame path is plain method calls: frame -> source -> transforms -> sinks.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import os
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any

import can

from canbridge import __version__, writer
from canbridge.buses import BusHandle
from canbridge.clock import Clock, Timer
from canbridge.component import Component, Context, RateLimitedLog, update_handler
from canbridge.config import REPLAY, PipelineConfig, topological_order
from canbridge.controls import ControlBoard
from canbridge.replay import END_OF_REPLAY, CaptureError, ReplayBus
from canbridge.signals import TimedValues, Update

log = logging.getLogger("canbridge")

HOUSEKEEPING_SECS = 1.0
"""At most this long between looks at the watchdog, records and status file: an idle Pi
wakes once a second, not more."""
EXIT_FAILED_START = 1
EXIT_BAD_FILE = 2
FAILURE_SHOWN_SECS = 60.0
"""A component that failed this recently shows "error" in the status (`canbridge status`
exits 1), with the failure."""
QUEUE_LIMIT = 10_000
"""Frames waiting for the engine at most; beyond it a newly received frame is dropped and
counted (a flood must not grow memory without bound, nor delay the timers behind it)."""
BATCH = 256
"""Frames handled between two looks at the timers, however many are waiting."""

_WAKE = object()


class Forward:
    """One `[forwards]` table: what to copy where, at most `max_per_sec` frames a second."""

    __slots__ = ("_tokens", "_updated", "dropped", "ids", "max_per_sec", "target")

    def __init__(self, ids: frozenset[tuple[int, bool]], target: BusHandle, max_per_sec: float):
        self.ids = ids
        self.target = target
        self.max_per_sec = max_per_sec
        self.dropped = 0
        self._tokens = max_per_sec
        self._updated: float | None = None

    def allow(self, now: float) -> bool:
        """A token bucket on the pipeline clock: bursts up to one second's worth."""
        if self._updated is not None:
            self._tokens = min(self.max_per_sec,
                               self._tokens + (now - self._updated) * self.max_per_sec)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.dropped += 1
        return False


class _Call:
    """A function another thread asked the engine thread to run (`Engine.post`)."""

    __slots__ = ("function",)

    def __init__(self, function: Callable[[], None]):
        self.function = function


class Engine:
    def __init__(self, config: PipelineConfig, *, dry_run: bool = False,
                 duration: float | None = None, notifier: Any = None):
        self.config = config
        self.dry_run = dry_run
        self.duration = duration
        self.notifier = notifier
        self.clock = Clock(virtual=any(bus["interface"] == REPLAY and bus["speed"] == "max"
                                       for bus in config.buses.values()))
        self.buses: dict[str, BusHandle] = {}
        self.components: dict[str, Component] = {}
        self.frames = 0
        self.updates = 0
        self.errors = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.controls = ControlBoard()
        self._stopping = False
        self._frame_handlers: dict[str, list[tuple[Component, Callable[[can.Message], None]]]] = {}
        self._views: dict[tuple[str, ...], TimedValues] = {}
        self._views_of: dict[str, list[TimedValues]] = {}  # by source: the views it feeds
        # Per source bus: the (ID, is 29-bit) pairs to copy, the target bus, the rate limit.
        self._forwards: dict[str, list[Forward]] = {}
        self.frames_dropped = 0
        self._failures: dict[str, tuple[float, str]] = {}
        self._drop_told = 0.0
        self._errors_log = RateLimitedLog(log, self.clock)
        self._started_wall = time.time()
        self._next_housekeeping = 0.0
        self._next_status = 0.0
        self._start_time = 0.0
        status = config.tables["status"]
        self.status_every = float(status["every_secs"])
        from canbridge.status import default_status_path

        self.status_path = status["file"] or str(default_status_path())

    # -- building -----------------------------------------------------------------------

    def _build(self) -> None:
        for name, values in self.config.buses.items():
            cls = ReplayBus if values["interface"] == REPLAY else BusHandle
            self.buses[name] = cls(name, values, self.clock, dry_run=self.dry_run)
        order = topological_order(self.config.components)
        consumers: dict[str, list[tuple[Component, Callable[[Update], None]]]] = {}
        for spec in order:
            inputs = tuple(spec.values.get("inputs") or ())
            context = Context(name=spec.name, clock=self.clock,
                              inputs_view=functools.partial(self._view, inputs),
                              log=logging.getLogger(f"canbridge.{spec.name}"),
                              buses=self.buses, dry_run=self.dry_run,
                              pipeline_name=self.config.name,
                              pipeline_dir=str(self.config.folder), health=self.health,
                              controls=self.controls, post=self.post,
                              pipeline_status=lambda: self.status_document("running"))
            self.components[spec.name] = spec.cls(spec.name, spec.values, context)
        for spec in order:
            component = self.components[spec.name]
            bus = spec.values.get("bus")
            if isinstance(bus, str) and type(component).on_frame is not Component.on_frame:
                self._frame_handlers.setdefault(bus, []).append((component, component.on_frame))
            for source in spec.values.get("inputs") or ():
                targets = consumers.setdefault(source, [])
                if type(component).on_update is not Component.on_update:
                    targets.append((component, update_handler(component)))
        for source, targets in consumers.items():
            views = self._views_of.setdefault(source, [])
            self.components[source]._emit = self._emitter(views, targets)
        for values in self.config.forwards.values():
            self._forwards.setdefault(values["from_bus"], []).append(Forward(
                frozenset([*((i, False) for i in values["ids"]),
                           *((i, True) for i in values["extended_ids"])]),
                self.buses[values["to_bus"]], values["max_per_sec"]))

    def _view(self, inputs: tuple[str, ...]) -> TimedValues:
        """`Context.latest`: one per set of inputs, however many components read it."""
        key = tuple(sorted(inputs))
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = TimedValues()
            for source in key:
                self._views_of.setdefault(source, []).append(view)
        return view

    def _emitter(self, views: list[TimedValues],
                 consumers: list[tuple[Component, Callable[[Update], None]]]
                 ) -> Callable[[Update], None]:
        def emit(update: Update) -> None:
            self.updates += 1
            for view in views:
                view.apply(update)
            for component, handle in consumers:
                try:
                    handle(update)
                except Exception as exc:
                    self._component_failed(component, "on_update", exc)
        return emit

    def _component_failed(self, component: Component, where: str, exc: BaseException) -> None:
        component.errors += 1
        self.errors += 1
        self._failures[component.name] = (time.monotonic(),
                                          f"{where}: {type(exc).__name__}: {exc}")
        self._errors_log.error((component.name, where, type(exc)),
                               "component %s failed in %s: %s: %s", component.name, where,
                               type(exc).__name__, exc)

    # -- running ------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    def post(self, function: Callable[[], None]) -> None:
        """Run `function` on the engine thread soon; safe from any thread."""
        self._queue.put(_Call(function))

    def request_stop(self) -> None:
        """Ask the run to end (signal handlers call this); safe from any thread."""
        self._stopping = True
        self._queue.put(_WAKE)

    def run(self) -> int:
        self._build()
        for bus in self.buses.values():
            bus.open()
        replays = [b for b in self.buses.values() if isinstance(b, ReplayBus)]
        merged = self._merged_replays(replays) if self.clock.virtual else None
        first = next(merged, None) if merged is not None else None
        if first is not None:
            self.clock.advance_to(first[1].timestamp)
        self._start_time = self.clock.now()
        for bus in self.buses.values():
            bus.start_reader(self._deliver)
        for name, component in self.components.items():
            try:
                component.start()
            except Exception as exc:
                # Nothing half-started keeps running: the run ends, naming what failed
                # (under systemd the service is restarted).
                log.error("component %s failed to start: %s: %s; stopping", name,
                          type(exc).__name__, exc)
                self._shutdown()
                return EXIT_FAILED_START
        self._summary(replays)
        if self.notifier is not None:
            self.notifier.ready()
        try:
            if merged is not None:
                self._run_virtual(first, merged)
            else:
                self._run_live(sum(1 for b in replays if not b.loop))
        except CaptureError as exc:
            log.error("%s", exc)
            return EXIT_BAD_FILE
        finally:
            self._shutdown()
        failed = [bus.error for bus in replays if bus.error]
        for error in failed:
            log.error("%s", error)
        return EXIT_BAD_FILE if failed else 0

    def _summary(self, replays: list[ReplayBus]) -> None:
        buses = ", ".join(f"{name} ({b.config['interface']}"
                          f"{' ' + str(b.config['channel']) if b.config.get('channel') else ''})"
                          for name, b in self.buses.items())
        kinds = ", ".join(f"{name} ({type(c).type_name})" for name, c in self.components.items())
        mode = "replay at full speed" if self.clock.virtual else "live"
        dry = ", dry run: nothing is transmitted" if self.dry_run else ""
        log.info("canbridge %s starting pipeline %r from %s: %s%s", __version__,
                 self.config.name, self.config.path, mode, dry)
        log.info("buses: %s; components: %s", buses or "none", kinds or "none")

    def _deliver(self, bus: BusHandle, msg: can.Message | None) -> None:
        """Called on reader threads: stamp the frame with pipeline time, queue it; a frame
        that finds QUEUE_LIMIT others waiting is dropped (the newest goes: what waits is
        older and in order) and counted."""
        if msg is not None and msg is not END_OF_REPLAY:
            if self._queue.qsize() >= QUEUE_LIMIT:
                self.frames_dropped += 1
                now = time.monotonic()
                if now - self._drop_told >= 60.0:
                    self._drop_told = now
                    log.warning("engine behind (%d frames waiting, a flood on bus %s?): "
                                "dropping new frames; %d dropped so far", QUEUE_LIMIT,
                                bus.name, self.frames_dropped)
                return
            if not self.clock.virtual:
                msg.timestamp = self.clock.now()
        self._queue.put((bus, msg))

    def _merged_replays(self, replays: list[ReplayBus]
                        ) -> Iterator[tuple[ReplayBus, can.Message]]:
        """(bus, frame) of every full-speed replay, in time order."""
        streams = [bus for bus in replays if bus.full_speed]
        if len(streams) == 1:  # the usual case: no merge, no tuple per frame to order by
            return zip(itertools.repeat(streams[0]), streams[0].timeline())
        counter = itertools.count()

        def tagged(bus: ReplayBus) -> Iterator[tuple[float, int, ReplayBus, can.Message]]:
            return ((m.timestamp, next(counter), bus, m) for m in bus.timeline())

        return ((bus, m) for _, _, bus, m in heapq.merge(*map(tagged, streams)))

    def _run_virtual(self, first: tuple[ReplayBus, can.Message] | None,
                     merged: Iterator[tuple[ReplayBus, can.Message]]) -> None:
        end = None if self.duration is None else self._start_time + self.duration
        clock = self.clock
        dispatch = self._dispatch
        on_timer_error = self._timer_failed
        item = first
        check_every = 256
        countdown = check_every
        while item is not None and not self._stopping:
            bus, msg = item
            ts = msg.timestamp
            gap = ts - clock.now()
            if gap > bus.config["max_replay_gap_secs"]:
                # A frame years ahead (a bad timestamp) must not make every 1 Hz timer fire
                # across the years: skip the gap, keep the timers' phase.
                log.warning("replay %s: the capture jumps %.0f s ahead at %s; skipping the gap "
                            "(max_replay_gap_secs = %g)", bus.name, gap, msg.timestamp,
                            bus.config["max_replay_gap_secs"])
                clock.skip(gap)
                if end is not None:
                    end += gap
            if end is not None and ts > end:
                clock.run_due(end, on_timer_error)
                clock.advance_to(end)
                break
            clock.run_due(ts, on_timer_error)
            clock.advance_to(ts)
            bus.frames_in += 1
            dispatch(bus, msg)
            countdown -= 1
            if countdown == 0:
                countdown = check_every
                self._drain_queue()
                self._housekeeping()
            item = next(merged, None)
        if item is None:
            for bus in self.buses.values():
                if isinstance(bus, ReplayBus):
                    bus.finished = True
        self._drain_queue()

    def _run_live(self, replays_to_finish: int) -> None:
        end = None if self.duration is None else self._start_time + self.duration
        clock = self.clock
        get = self._queue.get
        remaining = replays_to_finish
        while not self._stopping:
            now = clock.now()
            if end is not None and now >= end:
                break
            due = clock.wake_by()
            timeout = HOUSEKEEPING_SECS if due is None else min(max(due - now, 0.0),
                                                                HOUSEKEEPING_SECS)
            if end is not None:
                timeout = min(timeout, max(end - now, 0.0))
            try:
                item = get(timeout=timeout)
            except queue.Empty:
                item = None
            handled = 0
            while item is not None:
                if isinstance(item, _Call):
                    self._call(item)
                elif item is not _WAKE:
                    bus, msg = item
                    if msg is END_OF_REPLAY:
                        remaining -= 1
                    else:
                        self._dispatch(bus, msg)
                handled += 1
                if handled % BATCH == 0:
                    # A flood must not starve the timers: the inverter's bursts come first.
                    clock.run_due(clock.now(), self._timer_failed)
                    if self._stopping:
                        break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            clock.run_due(clock.now(), self._timer_failed)
            self._housekeeping()
            if replays_to_finish and remaining == 0:
                log.info("every replay has ended")
                break

    def _drain_queue(self) -> None:
        """Frames that live buses received during a full-speed replay: now, on its clock."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Call):
                self._call(item)
            elif item is not _WAKE and item[1] is not END_OF_REPLAY:
                bus, msg = item
                msg.timestamp = self.clock.now()
                self._dispatch(bus, msg)

    def _dispatch(self, bus: BusHandle, msg: can.Message) -> None:
        self.frames += 1
        bus.record(msg)
        for component, on_frame in self._frame_handlers.get(bus.name, ()):
            try:
                on_frame(msg)
            except Exception as exc:
                self._component_failed(component, "on_frame", exc)
        for forward in self._forwards.get(bus.name, ()):
            if (msg.arbitration_id, msg.is_extended_id) in forward.ids and not msg.is_error_frame:
                if not forward.allow(self.clock.now()):
                    continue
                forward.target.send(can.Message(
                    arbitration_id=msg.arbitration_id, is_extended_id=msg.is_extended_id,
                    is_remote_frame=msg.is_remote_frame, dlc=msg.dlc, data=msg.data,
                    is_fd=msg.is_fd))

    def _call(self, call: _Call) -> None:
        owner = getattr(call.function, "__self__", None)
        try:
            call.function()
        except Exception as exc:
            if isinstance(owner, Component):
                self._component_failed(owner, "a command", exc)
            else:
                self.errors += 1
                self._errors_log.error(("call", type(exc)), "command failed: %r", exc)

    def _timer_failed(self, timer: Timer, exc: BaseException) -> None:
        owner = getattr(timer.callback, "__self__", None)
        if isinstance(owner, Component):
            self._component_failed(owner, "a timer", exc)
        else:
            self.errors += 1
            self._errors_log.error(("timer", type(exc)), "timer failed: %r", exc)

    # -- health -------------------------------------------------------------------------

    def health(self) -> dict[str, dict[str, Any]]:
        """Every component's status, keyed by name."""
        out = {}
        for name, component in self.components.items():
            try:
                status = component.status()
            except Exception as exc:
                status = {"state": "error", "errors": component.errors,
                          "last_error": f"status() failed: {exc!r}"}
            failure = self._failures.get(name)
            if failure is not None and time.monotonic() - failure[0] < FAILURE_SHOWN_SECS:
                status = {**status, "state": "error", "last_error": failure[1]}
            out[name] = {"kind": component.kind, "type": type(component).type_name, **status}
        return out

    def status_document(self, state: str = "running") -> dict[str, Any]:
        now_wall = time.time()
        return {
            "version": __version__,
            "pipeline": self.config.name,
            "file": str(self.config.path),
            "pid": os.getpid(),
            "state": state,
            "clock": "replay" if self.clock.virtual else "live",
            "started_at": self._started_wall,
            "written_at": now_wall,
            "every_secs": self.status_every,
            "pipeline_time": self.clock.now(),
            "engine": {"frames": self.frames, "updates": self.updates, "errors": self.errors,
                       "frames_dropped": self.frames_dropped,
                       "forwards_dropped": sum(f.dropped for fs in self._forwards.values()
                                               for f in fs)},
            "components": self.health(),
            "buses": {name: {"interface": bus.config["interface"],
                             "channel": bus.config.get("channel"), **bus.status()}
                      for name, bus in self.buses.items()},
        }

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + HOUSEKEEPING_SECS
        for bus in self.buses.values():
            bus.flush()
        if self.notifier is not None:
            self.notifier.tick(self.health)
        if now >= self._next_status:
            self._next_status = now + self.status_every
            self._write_status("running")

    def _write_status(self, state: str, *, now: bool = False) -> None:
        """The status document, built here, written by the writer thread (or at once, at
        stop): a slow disk never holds up the engine."""
        from canbridge.status import write_status

        doc, path = self.status_document(state), self.status_path

        def failed(exc: OSError) -> None:
            self._errors_log.error("status-file", "cannot write the status file %s: %s",
                                   path, exc)

        if not now:
            writer.submit(("status", path), lambda: write_status(path, doc), failed)
            return
        try:
            write_status(path, doc)
        except OSError as exc:
            failed(exc)

    def _shutdown(self) -> None:
        if self.notifier is not None:
            self.notifier.stopping()
        # Readers end within their receive timeout while the components stop, not after:
        # a SIGTERM stops well within its 2 s. Sending still works until the buses close.
        for bus in self.buses.values():
            bus.stop_reader()
        for name, component in self.components.items():
            try:
                component.stop()
            except Exception as exc:
                self._component_failed(self.components[name], "stop", exc)
        if not writer.flush(timeout=5.0):
            log.error("state files still being written at stop (a stalled disk?)")
        self._write_status("stopped", now=True)
        for bus in self.buses.values():
            bus.close()
        log.info("stopped: %d frames in, %d updates, %d component errors", self.frames,
                 self.updates, self.errors)
