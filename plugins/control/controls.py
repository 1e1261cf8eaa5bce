"""Transform `controls`: limits an owner sets at run time (Home Assistant over MQTT).

Each control has a configured value (an option here) and may be set from outside through
the pipeline's control board (the mqtt sink with `control = true`). A set value may expire
(`for_minutes`, or `default_expiry_minutes`): the control then returns to its configured
value and says so. With `persist = true` set values survive a restart (a state file written
off the engine thread). Every control only lowers a limit the battery gave.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path as FilePath
from typing import Any

import tomli_w

from canbridge import Context, Flag, Number, Option, Path, Timer, Update, Value
from canbridge.controls import SWITCH, Command
from canbridge.documents import toml_document
from canbridge.shaping import Bound, Shaper, SocGate, number
from canbridge.writer import write_soon

from .limits import BY_NAME, CONTROLS, bounds


class Controls(Shaper):
    """Caps and stops an owner sets, from the pipeline file or at run time."""

    type_name = "controls"
    summary = ("limits an owner sets at run time (Home Assistant over MQTT), with expiry; "
               "they only ever lower the battery's limits")
    observes = frozenset(("soc",))
    options = (
        Option("charge_current_max", Number(min=0.0, max=3276.7), None,
               "largest charge current limit (A) until changed (unset: no cap)"),
        Option("discharge_current_max", Number(min=0.0, max=3276.7), None,
               "largest discharge current limit (A) until changed (unset: no cap)"),
        Option("min_soc", Number(min=0.0, max=100.0), None,
               "discharge stops at or below this SOC (%) (unset: no reserve)"),
        Option("charging", Flag(), True, "charging allowed"),
        Option("discharging", Flag(), True, "discharging allowed"),
        Option("hysteresis", Number(min=0.0, max=50.0), 2.0,
               "SOC (%) above min_soc before discharging resumes"),
        Option("default_expiry_minutes", Number(min=0.0, max=525600.0), 0.0,
               "a value set at run time returns to the configured one after this long "
               "(0: never), unless the command says for_minutes"),
        Option("persist", Flag(), False, "values set at run time survive a restart"),
        Option("state_file", Path(non_empty=True), "/var/lib/canbridge/controls.toml",
               "where persisted values are kept", written=True),
    )

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        self.configured: dict[str, Value | None] = {c.name: self.config[c.name] for c in CONTROLS}
        self.overrides: dict[str, tuple[Value, float | None]] = {}  # value, expiry (wall time)
        self._timers: dict[str, Timer] = {}
        self._gate = SocGate(upper=False, band=self.config["hysteresis"])
        path = FilePath(self.config["state_file"]).expanduser()
        self.path = path if path.is_absolute() else FilePath(context.pipeline_dir) / path
        self.commands = 0
        for control in CONTROLS:
            context.controls.offer(control, self._command, self._published(control.name))

    # -- values ---------------------------------------------------------------------------

    def value(self, name: str) -> Value | None:
        override = self.overrides.get(name)
        return self.configured[name] if override is None else override[0]

    def values(self) -> dict[str, Value | None]:
        return {control.name: self.value(control.name) for control in CONTROLS}

    def _published(self, name: str) -> Value | None:
        """What the outside sees: an unset control shows its neutral value (no limit)."""
        value = self.value(name)
        return BY_NAME[name].neutral if value is None else value

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self.config["persist"]:
            self._restore()

    def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()

    # -- commands (engine thread) -----------------------------------------------------------

    def _command(self, command: Command) -> None:
        name, value = command.control, command.value
        minutes = (self.config["default_expiry_minutes"] if command.for_minutes is None
                   else command.for_minutes)
        now = self.clock.now()
        expires = self.clock.wall_time(now) + minutes * 60.0 if minutes else None
        self.commands += 1
        self._set(name, value, expires)  # type: ignore[arg-type]
        self.log.info("control %s set to %s %s", name, _shown(name, value),
                      f"for {minutes:g} min" if minutes else "until changed")
        self._save()

    def _set(self, name: str, value: Value, expires: float | None) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        self.overrides[name] = (value, expires)
        if expires is not None:
            delay = max(0.0, expires - self.clock.wall_time())
            self._timers[name] = self.clock.after(delay, lambda: self._expire(name))
        self.context.controls.changed(name, self._published(name))
        self.reshape()

    def _expire(self, name: str) -> None:
        self._timers.pop(name, None)
        if self.overrides.pop(name, None) is None:
            return
        self.log.info("control %s expired: back to the configured %s", name,
                      _shown(name, self.configured[name]))
        self.context.controls.changed(name, self._published(name))
        self._save()
        self.reshape()

    # -- the shaping ----------------------------------------------------------------------

    def observe(self, update: Update) -> None:
        soc = update.values.get("soc")
        if number(soc):
            self._gate.follow(soc, self.value("min_soc"))  # type: ignore[arg-type]

    def bounds(self, update: Update, limits: Sequence[str]) -> dict[str, Bound]:
        return bounds(self.values(), self._gate.stopped, "control")

    # -- persistence ----------------------------------------------------------------------

    def _save(self) -> None:
        if not self.config["persist"]:
            return
        doc = {name: {"value": value, **({} if expires is None else {"expires": expires})}
               for name, (value, expires) in self.overrides.items()}
        write_soon(self.path, tomli_w.dumps(doc), self._save_failed)

    def _save_failed(self, exc: OSError) -> None:  # the writer's thread
        self.context.limited.error("state-file", "cannot write control state file %s: %s "
                                   "(controls go on, but a restart forgets them)", self.path, exc)

    def _restore(self) -> None:
        try:
            doc = toml_document(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.errors += 1
            self.log.error("control state file %s unusable (%s); configured values apply",
                           self.path, exc)
            return
        now = self.clock.wall_time()
        for name, item in doc.items():
            control = BY_NAME.get(name)
            if control is None or not isinstance(item, dict):
                continue
            try:
                value = control.parse(str(item.get("value")).upper() if control.kind == SWITCH
                                      else str(item.get("value"))).value
            except ValueError as exc:
                self.log.warning("control state file %s: %s ignored: %s", self.path, name, exc)
                continue
            expires = item.get("expires")
            if isinstance(expires, int | float) and expires <= now:
                continue
            self._set(name, value, expires if isinstance(expires, int | float) else None)  # type: ignore[arg-type]
            self.log.info("control %s restored: %s", name, _shown(name, value))

    def status(self) -> dict[str, Any]:
        return {**super().status(), "commands": self.commands,
                "controls": {name: _shown(name, value) for name, value in self.values().items()},
                "set": sorted(self.overrides)}


def _shown(name: str, value: Value | None) -> str:
    control = BY_NAME[name]
    if value is None:
        return "unset"
    if control.kind == SWITCH:
        return "on" if value else "off"
    return f"{value:g} {control.unit}"
