"""Helpers for testing a component on its own, on a virtual clock, without a pipeline.

    clock = Clock(virtual=True, start=1000.0)
    sink = build(PylontechSink, {"bus": "inverter"}, clock=clock, buses={"inverter": handle})
    feed(sink, update)                 # as the engine hands it over
    out = capture(transform)           # list that collects every update it emits
    clock.advance_to(1005.0); run_timers(clock)

Used by canbridge's own tests, and meant for third-party plugin authors too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

from canbridge.buses import BusHandle
from canbridge.clock import Clock
from canbridge.component import Component, Context, update_handler
from canbridge.schema import OptionError, apply_schema
from canbridge.signals import Update

C = TypeVar("C", bound=Component)


def build(cls: type[C], options: Mapping[str, Any], *, name: str = "under_test",
          clock: Clock | None = None, buses: Mapping[str, BusHandle] | None = None,
          dry_run: bool = False, start: bool = True, **context: Any) -> C:
    """Check `options` against the type's schema (raising on any problem) and build it."""
    values, problems = apply_schema(cls.schema(), dict(options), presets=cls.presets(options))
    messages = [f"{p.key}: {p.message}" for p in problems]
    if not problems:
        for problem in cls.check(values):
            if not isinstance(problem, OptionError):
                messages.append(f"{problem[0]}: {problem[1]}")
            elif not problem.warning:
                messages.append(f"{problem.key}: {problem.message}")
    if messages:
        raise ValueError("; ".join(messages))
    ctx = Context(name=name, clock=clock or Clock(virtual=True),
                  log=logging.getLogger(f"canbridge.{name}"), buses=dict(buses or {}),
                  dry_run=dry_run, **context)
    component = cls(name, values, ctx)
    if start:
        component.start()
    return component


def feed(component: Component, update: Update) -> None:
    """Hand `update` to `component` as an engine would: its `context.latest` first, then
    its `on_update`, or, when the update has none of the names it `reads`, nothing (a
    transform passes it on unchanged)."""
    component.context.latest.apply(update)
    update_handler(component)(update)


def capture(component: Component) -> list[Update]:
    """Collect every update `component` emits into the returned list."""
    out: list[Update] = []
    component._emit = out.append
    return out


def run_timers(clock: Clock, until: float | None = None) -> int:
    """Fire every timer due up to `until` (default: the clock's now) and, on a virtual clock,
    leave the clock at `until`. Errors in timers are re-raised."""
    def reraise(timer: object, exc: BaseException) -> None:
        raise exc
    until = clock.now() if until is None else until
    fired = clock.run_due(until, reraise)
    if clock.virtual:
        clock.advance_to(until)
    return fired


def virtual_bus(name: str, channel: str, clock: Clock, *, dry_run: bool = False,
                record: str | None = None) -> BusHandle:
    """An open python-can `virtual` bus handle on `channel` (use a unique channel per test)."""
    handle = BusHandle(name, {"interface": "virtual", "channel": channel, "record": record},
                       clock, dry_run=dry_run)
    handle.open()
    return handle
