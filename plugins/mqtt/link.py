"""The broker connection, kept off the engine thread.

paho's network thread connects (the broker may boot after the Pi), reconnects with backoff
forever and runs the callbacks. The engine thread only drops messages into an outbox, where a
newer payload for a topic replaces one not sent yet, so a slow or absent broker costs the CAN
path nothing and memory stays bounded. A publisher thread imports paho and creates its
client (so neither delays the first inverter frame), then drains the outbox while connected.
"Sticky" messages (discovery configs, the latest state) are sent again after every
(re)connection, since a restarted broker may have forgotten them. The password and TLS
files are read there too, when the client is made: a slow disk never delays the CAN path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .tls import tls_problem

if TYPE_CHECKING:
    from .pahoclient import Client, mqtt

KEEPALIVE_SECS = 30
RECONNECT_MIN_SECS = 0.5
RECONNECT_MAX_SECS = 30
MAX_QUEUED = 500  # paho's own queue of QoS>0 messages awaiting a connection or an ack
# At shutdown: the acknowledgement of `offline`, then paho's thread. Together they stay well
# inside the 2 s a SIGTERM allows the whole pipeline.
CLOSE_TIMEOUT_SECS = 0.5
STOP_TIMEOUT_SECS = 0.5
AUTH_REFUSALS = {"Bad user name or password", "Not authorized"}


@dataclass(frozen=True)
class Message:
    topic: str
    payload: str
    retain: bool


FINAL_CONNECT_SECS = 0.5
MAX_KEPT = 1000
"""Alarm-change states kept apart from the latest-wins queue, at most (then they coalesce)."""


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    client_id: str
    qos: int
    status_topic: str
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    """Read when the client is made; it wins over `password`."""
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password_file: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def first_line(path: str | None) -> str | None:
    """The first line of a secret's file (a password), or None without a file."""
    if path is None:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})"
                         ) from None
    return lines[0] if lines else ""


class Link:
    """One MQTT client: availability, an outbox, reconnection and its counters."""

    def __init__(self, settings: Settings, log: logging.Logger):
        self.settings = settings
        self.log = log
        self.state = "connecting"
        self.published = 0
        self.dropped = 0
        self.errors = 0
        self.last_error: str | None = None
        self._cond = threading.Condition()
        self._pending: dict[Any, Message] = {}  # by topic, or (topic, n) for a kept one
        self._kept = 0
        self._sticky: dict[str, Message] = {}
        self._connected = False
        self._stopping = False
        self._last_event: str | None = None
        self._handlers: dict[str, Callable[[bytes], None]] = {}
        self._client: Client | None = None  # made by the publisher thread
        self._publisher = threading.Thread(target=self._publish_loop, daemon=True,
                                           name=f"mqtt-{settings.client_id}")

    def _make_client(self) -> Client:
        from .pahoclient import CallbackAPIVersion, Client, mqtt

        s = self.settings
        password = s.password if s.password_file is None else first_line(s.password_file)
        key_password = first_line(s.key_password_file)
        if s.tls:
            problem = tls_problem(s.ca_file, s.cert_file, s.key_file, key_password)
            if problem is not None:
                raise ValueError(problem)
        client = Client(CallbackAPIVersion.VERSION2, client_id=s.client_id,
                        protocol=mqtt.MQTTv311, clean_session=True)
        client.reconnect_delay_set(RECONNECT_MIN_SECS, RECONNECT_MAX_SECS)
        client.max_queued_messages_set(MAX_QUEUED)
        client.will_set(s.status_topic, "offline", qos=s.qos, retain=True)
        if s.username is not None:
            client.username_pw_set(s.username, password)
        if s.tls:
            # keyfile_password always given: OpenSSL must never prompt on a terminal
            client.tls_set(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file,
                           keyfile_password=key_password or "")
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # -- engine thread ------------------------------------------------------------------

    def subscribe(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Call `handler(payload)` (on paho's thread) for messages on `topic`; before start."""
        self._handlers[topic] = handler

    def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        self._publisher.start()

    def publish(self, topic: str, payload: str, *, retain: bool = False,
                sticky: bool = False, keep: bool = False) -> None:
        """Queue `payload` for `topic`, replacing an unsent one (unless `keep`: an alarm
        change is never replaced by the next state, up to MAX_KEPT waiting); never waits on
        the network."""
        message = Message(topic, payload, retain)
        with self._cond:
            key: Any = topic
            if keep and self._kept < MAX_KEPT:
                self._kept += 1
                key = (topic, self._kept)
            elif self._pending.pop(topic, None) is not None:
                self.dropped += 1  # popped: the newer one goes to the end, after kept ones
            self._pending[key] = message
            if sticky:
                self._sticky[topic] = message
            self._cond.notify()

    def republish(self) -> None:
        """Queue every sticky message again (Home Assistant restarted, say)."""
        with self._cond:
            self._pending.update(self._sticky)
            self._cond.notify()

    def close(self) -> None:
        """Flush, say `offline` (a clean disconnect sends no last will) and disconnect. A
        connection still being made gets FINAL_CONNECT_SECS, so a short run (a replay at
        full speed) still delivers its last state."""
        if self._publisher.ident is None:  # never started: another component's start failed
            self.state = "disconnected"
            return
        with self._cond:
            if not self._connected and self.state == "connecting":
                self._cond.wait_for(lambda: self._connected, FINAL_CONNECT_SECS)
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify()
        if self._publisher.is_alive():
            # It may sit in a file read (a stalled disk): a daemon, it is left behind.
            self._publisher.join(STOP_TIMEOUT_SECS)
        client = self._client
        if client is None:  # stopped before the publisher thread had made it
            self.state = "disconnected"
            return
        if self._connected:
            with self._cond:
                batch = self._take()
            for message in batch:
                self._send(client, message)
            info = client.publish(self.settings.status_topic, "offline",
                                  qos=self.settings.qos, retain=True)
            try:
                info.wait_for_publish(CLOSE_TIMEOUT_SECS)
            except (RuntimeError, ValueError) as exc:
                self._error(f"could not publish offline: {exc}")
        client.disconnect()
        # paho's thread may sit in a connect attempt for its whole timeout; the pipeline
        # must still stop within its 2 s, and the thread is a daemon that dies with us.
        stopper = threading.Thread(target=client.loop_stop, name="mqtt-stop",
                                   daemon=True)
        stopper.start()
        stopper.join(STOP_TIMEOUT_SECS)
        self._connected = False
        self.state = "disconnected"

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {"state": self.state, "published": self.published, "dropped": self.dropped,
                    "errors": self.errors, "last_error": self.last_error}

    # -- publisher thread -----------------------------------------------------------------

    def _publish_loop(self) -> None:
        client = self._new_client()
        if client is None:
            return
        client.connect_async(self.settings.host, self.settings.port, KEEPALIVE_SECS)
        client.loop_start()
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stopping or (self._connected and bool(self._pending)))
                if self._stopping:
                    return
                batch = self._take()
            for message in batch:
                self._send(client, message)

    def _new_client(self) -> Client | None:
        """paho's client, made on this thread; a secret or TLS file that cannot be used (it
        changed since the pipeline was checked) is named and tried again with backoff. None
        once stopping."""
        delay = RECONNECT_MIN_SECS
        while True:
            try:
                client = self._make_client()
            except (OSError, ValueError) as exc:
                self._error(f"cannot set up MQTT: {exc}")
                with self._cond:
                    self.state = "error"  # no client to connect with, until a file is fixed
                self._event(f"setup {exc}", logging.ERROR,
                            "cannot set up MQTT: %s; trying again with backoff", exc)
            else:
                with self._cond:
                    if self._stopping:
                        return None
                    self._client = client
                    if self.state == "error":
                        self.state = "connecting"
                return client
            with self._cond:
                if self._cond.wait_for(lambda: self._stopping, delay):
                    return None
            delay = min(2 * delay, RECONNECT_MAX_SECS)

    def _take(self) -> list[Message]:
        """Everything pending, retained messages (availability, discovery) before data."""
        batch = sorted(self._pending.values(), key=lambda message: not message.retain)
        self._pending.clear()
        self._kept = 0
        return batch

    def _send(self, client: Client, message: Message) -> None:
        from .pahoclient import MQTTErrorCode, mqtt

        qos = self.settings.qos
        failure: str | None = None  # why it is lost; None: lost with the connection, told
        try:
            rc = client.publish(message.topic, message.payload, qos=qos,
                                retain=message.retain).rc
        except Exception as exc:  # paho refusing one message must not end MQTT for the run
            failure = repr(exc)
        else:
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            if rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0:
                return  # paho keeps it and sends it once reconnected
            if rc != MQTTErrorCode.MQTT_ERR_NO_CONN:
                failure = mqtt.error_string(rc)
        with self._cond:
            self.dropped += 1
        if failure is not None:
            self._error(f"publish to {message.topic} failed: {failure}")

    # -- paho's network thread ------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason: Any, properties: Any) -> None:
        address = self.settings.address
        if reason.is_failure:
            hint = " (check username and password)" if str(reason) in AUTH_REFUSALS else ""
            self._error(f"broker {address} refused the connection: {reason}")
            self._event(f"refused {reason}", logging.ERROR,
                        "MQTT broker %s refused the connection: %s%s; retrying",
                        address, reason, hint)
            return
        client.publish(self.settings.status_topic, "online", qos=self.settings.qos, retain=True)
        for topic in self._handlers:
            client.subscribe(topic, qos=self.settings.qos)
        with self._cond:
            self._connected = True
            self.state = "connected"
            self._pending.update(self._sticky)
            self._cond.notify_all()
        self._event("connected", logging.INFO, "connected to MQTT broker %s", address)

    def _on_connect_fail(self, client: Client, userdata: Any) -> None:
        reason = client.last_connect_error or "no reason given"
        address = self.settings.address
        self._error(f"cannot reach broker {address}: {reason}")
        self._event(f"unreachable {reason}", logging.WARNING,
                    "cannot reach MQTT broker %s: %s; retrying with backoff", address, reason)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason: Any, properties: Any) -> None:
        with self._cond:
            was_connected, self._connected = self._connected, False
            if self._stopping:
                return
            self.state = "disconnected"
        if was_connected:
            self._error(f"connection to broker lost: {reason}")
            self._event("lost", logging.WARNING, "lost connection to MQTT broker %s (%s); "
                        "reconnecting", self.settings.address, reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                    reason: Any, properties: Any) -> None:
        with self._cond:
            self.published += 1

    def _on_message(self, client: mqtt.Client, userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        handler = self._handlers.get(message.topic)
        if handler is not None:
            try:
                handler(message.payload)
            except Exception as exc:  # paho ends its thread on it: MQTT would be dead
                self._error(f"handling a message on {message.topic} failed: {exc!r}")
                self._event(f"handler {message.topic}", logging.ERROR,
                            "handling a message on %s failed: %r", message.topic, exc)

    # -- helpers ----------------------------------------------------------------------------

    def _error(self, text: str) -> None:
        with self._cond:
            self.errors += 1
            self.last_error = text
            if not self._connected and not self._stopping:
                self.state = "disconnected"

    def _event(self, kind: str, level: int, message: str, *args: Any) -> None:
        """Log a connection change once, not once per retry."""
        if kind != self._last_event:
            self._last_event = kind
            self.log.log(level, message, *args)
