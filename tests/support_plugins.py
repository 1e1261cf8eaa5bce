"""Test-only component types, loaded as a plugin through $CANBRIDGE_PLUGINS or
`load_registry(extra_modules=...)`: small, predictable parts to test the engine with."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

import can

from canbridge import (
    BusRef,
    Integer,
    ListOf,
    Number,
    Option,
    OptionError,
    Sink,
    Source,
    Text,
    Transform,
    Update,
    hookimpl,
)


class FrameSource(Source):
    """Emits {"frame_id", "byte0"} for each frame on its bus; raises on ID 0x666."""

    type_name = "test-frames"
    summary = "test: one update per frame"
    options = (Option("bus", BusRef(), help="bus to read"),)

    def on_frame(self, msg: can.Message) -> None:
        if msg.arbitration_id == 0x666:
            raise ValueError("frame 0x666 is cursed")
        self.emit(Update(msg.timestamp, {"frame_id": msg.arbitration_id,
                                         "byte0": msg.data[0] if msg.data else -1}))


class Ticker(Source):
    """Emits {"tick": n} every `period` seconds of pipeline time."""

    type_name = "test-ticker"
    summary = "test: periodic updates"
    options = (Option("period", Number(min=0.001), 1.0, "seconds between ticks"),
               Option("fail_every", Integer(min=0), 0, "every n-th tick raises (0: none)"))

    def start(self) -> None:
        self.ticks = 0
        self.clock.every(self.config["period"], self.tick)

    def tick(self) -> None:
        self.ticks += 1
        every = self.config["fail_every"]
        if every and self.ticks % every == 0:
            raise RuntimeError(f"tick {self.ticks} is cursed")
        self.emit(Update(self.clock.now(), {"tick": self.ticks}))

    def status(self) -> dict[str, Any]:
        return {"state": "ok", "ticks": self.ticks, "errors": self.errors}


READS = Option("reads", ListOf(Text()), None, "the signals on_update looks at (all: none given)")


def _reads(component: Transform | Sink) -> None:
    names = component.config["reads"]
    component.reads = None if names is None else frozenset(names)


class Tag(Transform):
    """Adds {"path": previous path + its own name}, to show ordering."""

    type_name = "test-tag"
    summary = "test: append the component name to 'path'"
    options = (READS,)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        _reads(self)
        self.seen = 0

    def on_update(self, update: Update) -> None:
        self.seen += 1
        self.emit(update.with_values({"path": f"{update.values.get('path', '')}/{self.name}"}))


class SendSink(Sink):
    """Sends each update's frame_id + 0x100 on its bus, one byte: the update count."""

    type_name = "test-send"
    summary = "test: a frame per update"
    options = (Option("bus", BusRef(), help="bus to send on"),
               Option("label", Text(), "", "free text"))

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[OptionError]:
        if config["label"] == "broken check":
            raise RuntimeError("a bug in the plugin")
        return ()

    @classmethod
    def check_bus(cls, config: Mapping[str, Any], option: str, bus: Mapping[str, Any]
                  ) -> Iterable[OptionError]:
        if config["label"] == "broken bus check":
            raise RuntimeError("a bug in the plugin")
        return ()

    def start(self) -> None:
        self.count = 0

    def on_update(self, update: Update) -> None:
        self.count += 1
        frame_id = int(update.values.get("frame_id", 0)) + 0x100
        self.context.bus(self.config["bus"]).send(
            can.Message(arbitration_id=frame_id & 0x7FF, is_extended_id=False,
                        data=[self.count & 0xFF]))


class Collect(Sink):
    """Keeps every update it receives, for in-process assertions."""

    type_name = "test-collect"
    summary = "test: remember updates"
    options = (READS,)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        _reads(self)

    def start(self) -> None:
        self.received: list[Update] = []
        self.stopped = False

    def on_update(self, update: Update) -> None:
        self.received.append(update)

    def stop(self) -> None:
        self.stopped = True


class BrokenBus(can.BusABC):
    """A python-can bus whose every send fails, like an adapter in bus-off."""

    def __init__(self, channel: Any = None, **kwargs: Any):
        super().__init__(channel=channel, **kwargs)
        self.channel_info = "broken"

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        raise can.CanOperationError("bus-off")

    def _recv_internal(self, timeout: float | None) -> tuple[None, bool]:
        threading.Event().wait(timeout or 0)
        return None, False


class Wedge(Sink):
    """Blocks the engine thread forever after `after` updates (a wedged component)."""

    type_name = "test-wedge"
    summary = "test: hang the engine"
    options = (Option("after", Integer(min=0), 3, "updates before hanging"),)

    def start(self) -> None:
        self.seen = 0

    def on_update(self, update: Update) -> None:
        self.seen += 1
        if self.seen > self.config["after"]:
            threading.Event().wait()


class BrokenStart(Sink):
    """A sink whose start() raises (a plugin bug, a file it needs missing)."""

    type_name = "test-broken-start"
    summary = "test: fail to start"

    def start(self) -> None:
        raise FileNotFoundError("acme.cfg is missing")


class Viewer(Sink):
    """Notes, per update, whether `context.latest` (the core's view) had it already."""

    type_name = "test-view"
    summary = "test: look at the shared view in on_update"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.latest = self.context.latest
        self.had_it: list[bool] = []

    def on_update(self, update: Update) -> None:
        self.had_it.append(all(self.latest.get(k) == v for k, v in update.values.items()))


class Reader(Sink):
    """Reads `context.latest` only at stop: no on_update at all."""

    type_name = "test-read"
    summary = "test: read the shared view at stop"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.latest = self.context.latest

    def stop(self) -> None:
        self.last = self.latest.snapshot()


@hookimpl
def canbridge_component_types() -> list[type]:
    return [FrameSource, Ticker, Tag, SendSink, Collect, Wedge, BrokenStart, Viewer, Reader]
