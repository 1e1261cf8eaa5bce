"""The `mqtt` sink: battery signals and pipeline health to MQTT, announced to Home Assistant.

Topics (PREFIX = topic_prefix, NODE = node_id):
- PREFIX/NODE/state: one JSON object, every latest signal by name plus `health`, sent every
  `publish_every_secs` and at once when an alarm turns on or off. A full-speed replay sends
  it at most every `publish_every_secs` of real time, as a live bridge does, besides every
  alarm change and the final state.
- PREFIX/NODE/status: retained `online`, `offline` on a clean stop and as the last will.
- DISCOVERY/sensor|binary_sensor/NODE/SIGNAL/config: retained, one per signal once it has
  been seen, sent again whenever Home Assistant announces `online` on DISCOVERY/status.
- `legacy_topic`: the earlier Discover-to-Pylontech program's JSON object, for old dashboards.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path as FilePath
from typing import Any

from canbridge import (
    Choice,
    Flag,
    Integer,
    LatestValues,
    Number,
    Option,
    OptionError,
    Path,
    Sink,
    Text,
    Update,
    Value,
)
from canbridge.clock import SIDE_SLACK_SECS
from canbridge.controls import Control

from .homeassistant import control_config, device_block, discovery_config
from .legacy import legacy_payload
from .link import Link, Settings, first_line
from .tls import tls_problem

NODE_ID = re.compile(r"[A-Za-z0-9_-]+")
IDENTITY = ("manufacturer", "model")
LOCAL = frozenset({"127.0.0.1", "localhost", "::1"})
"""Brokers on this machine: only local processes can send commands there."""
MAX_NAME_SETS = 64
"""Distinct sets of signal names remembered by `_kinds` (one per frame type, in practice)."""


def _active_alarms(latest: LatestValues) -> set[str]:
    return {name for name in latest.active_conditions() if name.startswith("alarm_")}


def _json_value(value: Value) -> Value | None:
    """Floats rounded to hide binary noise (55.900000000000006); non-finite ones dropped."""
    if isinstance(value, float):
        return round(value, 3) if math.isfinite(value) else None
    return value


def _bad_topic(topic: str) -> str | None:
    if not topic or topic.startswith("/") or topic.endswith("/"):
        return "must be a topic without a leading or trailing /"
    if "+" in topic or "#" in topic:
        return "must not contain the wildcards + or #"
    return None


class MqttSink(Sink):
    type_name = "mqtt"
    summary = "publish signals and health to an MQTT broker, with Home Assistant discovery"
    options = (
        Option("host", Text(non_empty=True), "localhost", "MQTT broker host name or address"),
        Option("port", Integer(1, 65535), 1883, "MQTT broker TCP port (8883 is usual with TLS)"),
        Option("client_id", Text(), None, 'MQTT client id (unset: "canbridge-NODE")'),
        Option("username", Text(), None, "user name, if the broker wants one"),
        Option("password_file", Path(), None, "file whose first line is the password"),
        Option("password", Text(), None,
               "password in the pipeline file itself (prefer password_file)", secret=True),
        Option("tls", Flag(), False, "connect with TLS"),
        Option("ca_file", Path(), None, "CA certificates for TLS (unset: the system's)"),
        Option("cert_file", Path(), None, "client certificate for TLS, if the broker wants one"),
        Option("key_file", Path(), None, "private key of cert_file"),
        Option("key_password_file", Path(), None,
               "file whose first line is key_file's passphrase (canbridge never prompts)"),
        Option("topic_prefix", Text(), "canbridge", "first level of every canbridge topic"),
        Option("node_id", Text(), None,
               "second topic level and Home Assistant device id (unset: the pipeline name)"),
        Option("publish_every_secs", Number(min=0, min_exclusive=True, max=3600.0), 5.0,
               "seconds between state messages"),
        Option("qos", Choice((0, 1, 2)), 1, "MQTT quality of service of every message"),
        Option("discovery", Flag(), True, "announce every signal to Home Assistant"),
        Option("discovery_prefix", Text(), "homeassistant",
               "Home Assistant's MQTT discovery prefix"),
        Option("legacy_topic", Text(), None,
               'also publish the old Discover-to-Pylontech JSON here (e.g. "DiscoverStorage")'),
        Option("control", Flag(), False,
               "accept commands for the pipeline's controls on TOPIC_PREFIX/NODE/set/CONTROL "
               "(needs username, or a broker on this machine)"),
    )

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[tuple[str, str] | OptionError]:
        for key in ("topic_prefix", "discovery_prefix", "legacy_topic"):
            problem = config[key] is not None and _bad_topic(config[key])
            if problem:
                yield key, problem
        node_id = config["node_id"]
        if node_id is not None and not NODE_ID.fullmatch(node_id):
            yield "node_id", "may hold only letters, digits, _ and -"
        if config["password"] is not None and config["password_file"] is not None:
            yield "password", "give password or password_file, not both"
        if config["username"] is None:
            for key in ("password", "password_file"):
                if config[key] is not None:
                    yield key, "needs username"
        if not config["tls"]:
            for key in ("ca_file", "cert_file", "key_file"):
                if config[key] is not None:
                    yield key, "needs tls = true"
        if config["key_file"] is not None and config["cert_file"] is None:
            yield "key_file", "needs cert_file"
        elif config["tls"]:
            try:
                problem = tls_problem(config["ca_file"], config["cert_file"],
                                      config["key_file"],
                                      first_line(config["key_password_file"]))
            except ValueError as exc:
                problem = f"key_password_file {exc}"
            if problem is not None:
                key, _, message = problem.partition(" ")
                yield key, message
        if config["password"] is not None:
            yield OptionError("password", "written in the pipeline file; prefer password_file",
                              warning=True)
        if config["control"] and config["username"] is None and config["host"] not in LOCAL:
            yield "control", (f"commands from an anonymous connection to {config['host']} are "
                              "refused: set username (and a password), or use a broker on "
                              "this machine")

    def __init__(self, name: str, config: Mapping[str, Any], context: Any):
        super().__init__(name, config, context)
        cfg = self.config
        self.node_id = cfg["node_id"] or re.sub(r"[^A-Za-z0-9_-]", "_", context.pipeline_name)
        self.base = base = f"{cfg['topic_prefix']}/{self.node_id}"
        self.state_topic = f"{base}/state"
        self.status_topic = f"{base}/status"
        self.commands_refused = 0
        self.skipped = 0
        self._next_replay_state = 0.0  # clock.real_now() of the next periodic state at "max"
        self.latest = context.latest
        self._identity: dict[str, Value] = {}  # identity values as last seen
        self._alarms: set[str] = set()  # active alarms as last published
        self.announced: set[str] = set()
        self._kinds_by_names: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._timer: Any = None
        # Made here, started with the sink: its thread reads the password and TLS files,
        # so nothing here can fail on a file.
        self.link = Link(Settings(
            host=cfg["host"], port=cfg["port"],
            client_id=cfg["client_id"] or f"canbridge-{self.node_id}", qos=cfg["qos"],
            status_topic=self.status_topic, username=cfg["username"],
            password=cfg["password"], password_file=self._path("password_file"),
            tls=cfg["tls"], ca_file=self._path("ca_file"),
            cert_file=self._path("cert_file"), key_file=self._path("key_file"),
            key_password_file=self._path("key_password_file")), self.log)
        if cfg["discovery"]:
            self.link.subscribe(f"{cfg['discovery_prefix']}/status", self._on_ha_status)

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        if cfg["password"] is not None:
            self.log.warning("%s: password is written in the pipeline file; prefer "
                             "password_file", self.name)
        self._timer = self.clock.every(cfg["publish_every_secs"], self.publish_state,
                                      slack=SIDE_SLACK_SECS)
        if cfg["control"]:
            self._offer_controls()
        self.link.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.publish_state(always=True)
        self.link.close()

    def _path(self, key: str) -> str | None:
        value = self.config[key]
        if value is None:
            return None
        return str(FilePath(self.context.pipeline_dir) / value)

    # -- engine thread ----------------------------------------------------------------------

    def on_update(self, update: Update) -> None:
        """`self.latest` has the update already (the core's view of the inputs); what
        changed is judged against what this sink saw before."""
        values = update.values
        alarms, identity = self._kinds(values)
        identity_changed = False
        if identity:
            seen = self._identity
            identity_changed = any(seen.get(name) != values[name] for name in identity)
            seen.update((name, values[name]) for name in identity)
        alarm_changed = False
        if alarms:  # an alarm report (alarm_report is among them) or alarms outside one
            active = _active_alarms(self.latest)
            alarm_changed, self._alarms = active != self._alarms, active
        if self.config["discovery"] and (identity_changed
                                         or not self.announced.issuperset(values)):
            new = [name for name in values if name not in self.announced]
            self._announce(list(self.latest) if identity_changed else new)
        if alarm_changed:
            self.publish_state(always=True)

    def _kinds(self, values: Mapping[str, Value]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The alarm and the identity names among `values`', worked out once per set of
        names: every update of one frame type carries the same names, thousands a day."""
        names = tuple(values)
        kinds = self._kinds_by_names.get(names)
        if kinds is None:
            if len(self._kinds_by_names) >= MAX_NAME_SETS:
                self._kinds_by_names.clear()
            kinds = (tuple(name for name in names if name.startswith("alarm_")),
                     tuple(name for name in names if name in IDENTITY))
            self._kinds_by_names[names] = kinds
        return kinds

    def _announce(self, names: list[str]) -> None:
        """Publish (retained) the discovery config of each of `names`."""
        if not names:
            return
        cfg = self.config
        device = device_block(self.node_id, self.latest.get("manufacturer"),
                              self.latest.get("model"))
        for name in names:
            topic, config = discovery_config(
                name, self.latest[name], node_id=self.node_id,
                discovery_prefix=cfg["discovery_prefix"], state_topic=self.state_topic,
                availability_topic=self.status_topic, device=device)
            self.link.publish(topic, json.dumps(config), retain=True, sticky=True)
            self.announced.add(name)

    def publish_state(self, *, always: bool = False) -> None:
        """Queue the state object (and the legacy one); the latest queued wins.

        A full-speed replay runs through days of periodic states a minute: they are built
        and sent at most every `publish_every_secs` of real time, as often as a live bridge
        sends them (more would only flood the broker and Home Assistant's history). An alarm
        change and the last state (`always`) are always queued."""
        if not always and self.clock.virtual:
            now = self.clock.real_now()
            if now < self._next_replay_state:
                self.skipped += 1
                return
            self._next_replay_state = now + self.config["publish_every_secs"]
        values = self.latest.snapshot()
        state: dict[str, Any] = {}
        for name, value in values.items():
            clean = _json_value(value)
            if clean is not None:
                state[name] = clean
        state["health"] = self.context.health()
        self.link.publish(self.state_topic, json.dumps(state, default=str), sticky=True,
                          keep=always)
        legacy_topic = self.config["legacy_topic"]
        if legacy_topic is not None and values:
            self.link.publish(legacy_topic, json.dumps(legacy_payload(values)), sticky=True)

    # -- controls ---------------------------------------------------------------------------

    def _offer_controls(self) -> None:
        """Subscribe to every control's set topic, publish its value, announce it to HA."""
        board = self.context.controls
        for control in board.controls():
            self.link.subscribe(f"{self.base}/set/{control.name}", self._handler(control))
            self._publish_control(control.name, board.value(control.name))
            if self.config["discovery"]:
                topic, config = control_config(
                    control, node_id=self.node_id, base=self.base,
                    discovery_prefix=self.config["discovery_prefix"],
                    availability_topic=self.status_topic,
                    device=device_block(self.node_id, None, None))
                self.link.publish(topic, json.dumps(config), retain=True, sticky=True)
        board.listen(self._publish_control)

    def _handler(self, control: Control) -> Callable[[bytes], None]:
        topic = f"{self.base}/set/{control.name}"
        board = self.context.controls

        def on_message(payload: bytes) -> None:  # paho's thread
            try:
                command = control.parse(payload)
            except ValueError as exc:
                # Logged before counted: whoever sees the count can rely on the log line.
                self.context.limited.warning(("refused", topic), "%s: refused %s %r: %s",
                                             self.name, topic, payload[:64], exc)
                self.commands_refused += 1
                return
            self.context.post(lambda: board.command(command))

        return on_message

    def _publish_control(self, name: str, value: Value | None) -> None:
        if value is None:
            return  # a button has no value
        if isinstance(value, bool):
            text = "ON" if value else "OFF"
        else:
            text = f"{value:g}" if isinstance(value, float) else str(value)
        self.link.publish(f"{self.base}/control/{name}", text, retain=True, sticky=True)

    def _on_ha_status(self, payload: bytes) -> None:
        """Home Assistant (re)started: announce everything again, in case the broker lost
        the retained configs meanwhile (runs on paho's thread)."""
        if payload.strip() == b"online":
            self.link.republish()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"broker": f"{self.config['host']}:{self.config['port']}",
                               "announced": len(self.announced)}
        if self.config["control"]:
            out["commands_refused"] = self.commands_refused
        if self.clock.virtual:
            out["states_skipped"] = self.skipped
        out.update(self.link.status())
        out["errors"] += self.errors
        return out
