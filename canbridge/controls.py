"""Remote controls: what a component lets an owner set at run time, and the way in.

A component offers a control on the pipeline's `ControlBoard` (a number, a switch or a
button, with its range) and handles the commands for it; a sink that talks to the outside
(MQTT) lists the board's controls, parses what arrives with `Control.parse` on its own
thread, and hands valid commands to `Context.post`, which runs them on the engine thread.
The component reports every change of value with `ControlBoard.changed`; listeners (the MQTT
sink, to publish the value) hear of it on the engine thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from canbridge.documents import json_document
from canbridge.signals import Value

NUMBER, SWITCH, BUTTON = "number", "switch", "button"
PRESS = "PRESS"
_TRUE = {"on", "true", "1", "yes"}
_FALSE = {"off", "false", "0", "no"}


@dataclass(frozen=True)
class Command:
    """One parsed command: the value (None for a button) and how long it holds (minutes, or
    None for the control's default)."""

    control: str
    value: Value | None
    for_minutes: float | None = None


@dataclass(frozen=True)
class Control:
    name: str
    kind: str
    help: str
    unit: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    neutral: float | None = None
    """The number that means "no limit", shown while the control is unset."""

    def parse(self, payload: bytes | str) -> Command:
        """A command from a message: a plain value ("50", "ON") or a JSON object
        {"value": 50, "for_minutes": 120}. ValueError says what is wrong."""
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        text = text.strip()
        raw: Any = text
        for_minutes = None
        if text.startswith("{"):
            try:
                doc = json_document(text)
            except ValueError as exc:
                raise ValueError(f"not valid JSON: {getattr(exc, 'msg', exc)}") from None
            if not isinstance(doc, dict) or ("value" not in doc and self.kind != BUTTON):
                raise ValueError('expected {"value": ..., "for_minutes": ...}')
            unknown = set(doc) - {"value", "for_minutes"}
            if unknown:
                raise ValueError(f"unknown key {sorted(unknown)[0]!r}")
            raw = doc.get("value", PRESS)
            if "for_minutes" in doc:
                for_minutes = _number(doc["for_minutes"], "for_minutes")
                if for_minutes < 0:
                    raise ValueError("for_minutes must not be negative")
        return Command(self.name, self._value(raw), for_minutes)

    def _value(self, raw: Any) -> Value | None:
        if self.kind == BUTTON:
            if str(raw).strip().upper() != PRESS:
                raise ValueError(f'a button takes "{PRESS}", got {raw!r}')
            return None
        if self.kind == SWITCH:
            if isinstance(raw, bool):
                return raw
            word = str(raw).strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
            raise ValueError(f"expected ON or OFF, got {raw!r}")
        value = _number(raw, "value")
        low = -math.inf if self.minimum is None else self.minimum
        high = math.inf if self.maximum is None else self.maximum
        if not low <= value <= high:
            raise ValueError(f"{value:g} is out of range ({low:g}..{high:g})")
        return value


def _number(raw: Any, what: str) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"{what}: expected a number, got {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what}: expected a finite number, got {raw!r}")
    return value


Handler = Callable[[Command], None]
Listener = Callable[[str, "Value | None"], None]


class ControlBoard:
    """Every control of one pipeline; used on the engine thread (parse anywhere)."""

    def __init__(self) -> None:
        self._controls: dict[str, tuple[Control, Handler]] = {}
        self._values: dict[str, Value | None] = {}
        self._listeners: list[Listener] = []

    def offer(self, control: Control, handler: Handler, value: Value | None) -> None:
        if control.name in self._controls:
            raise ValueError(f"control {control.name!r} is offered twice")
        self._controls[control.name] = (control, handler)
        self._values[control.name] = value

    def controls(self) -> list[Control]:
        return [control for control, _ in self._controls.values()]

    def get(self, name: str) -> Control | None:
        entry = self._controls.get(name)
        return None if entry is None else entry[0]

    def value(self, name: str) -> Value | None:
        return self._values.get(name)

    def command(self, command: Command) -> None:
        self._controls[command.control][1](command)

    def changed(self, name: str, value: Value | None) -> None:
        self._values[name] = value
        for listener in self._listeners:
            listener(name, value)

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)
