"""A real mosquitto broker for tests and benchmarks: loopback only, a free port, optional users.

    from broker import Mosquitto, Subscriber, mosquitto_fixture

    broker = mosquitto_fixture()                       # a pytest fixture in the test module
    secure_broker = mosquitto_fixture(users={"bat": "s3cret"})

    def test_x(broker):                                # started; stopped after the test
        with Subscriber(broker) as sub:                 # a real paho client on "#"
            ...
            assert sub.wait("canbridge/battery/status").payload == b"online"
        broker.restart()                                # same port, so clients reconnect

Or without pytest: `with Mosquitto(folder) as broker: ...`.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

HOST = "127.0.0.1"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
READY_TIMEOUT = 5.0


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Mosquitto:
    """One mosquitto process on 127.0.0.1; its config, password file and log live in `folder`.

    The port is chosen once, so `restart()` (or `stop()` then `start()`) brings the broker
    back where its clients expect it. Without `persistence`, a restart forgets retained
    messages, as a freshly booted broker would.
    """

    def __init__(self, folder: Path, *, users: Mapping[str, str] | None = None,
                 port: int | None = None, extra: tuple[str, ...] = ()):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        self.users = dict(users or {})
        self.extra = extra  # more config lines for the listener (cafile, certfile, ...)
        self.config_file = self.folder / "mosquitto.conf"
        self.password_file = self.folder / "mosquitto.passwd"
        self.log_file = self.folder / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_config(self) -> None:
        lines = [f"listener {self.port} {HOST}", "persistence false", "log_dest stderr",
                 "log_type all"]
        if os.geteuid() == 0:
            # as root mosquitto would switch to its own user, who cannot read tmp_path
            lines.append(f"user {getpass.getuser()}")
        if self.users:
            self.password_file.unlink(missing_ok=True)
            for index, (user, password) in enumerate(self.users.items()):
                create = ["-c"] if index == 0 else []
                subprocess.run([MOSQUITTO_PASSWD, "-b", *create, str(self.password_file),
                                user, password], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        lines += self.extra
        self.config_file.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Mosquitto:
        """Start the broker and wait (bounded) until it accepts TCP connections."""
        if self.running:
            return self
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config_file)],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}:\n"
                                   f"{self.log()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {HOST}:{self.port} within "
                           f"{READY_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL if it lingers)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> Mosquitto:
        self.stop()
        return self.start()

    def log(self) -> str:
        """Everything the broker logged so far (for assertion messages)."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mosquitto_fixture(*, users: Mapping[str, str] | None = None,
                      start: bool = True) -> Callable[..., Iterator[Mosquitto]]:
    """A pytest fixture giving each test its own broker in `tmp_path / "mosquitto"`.

    With `start=False` the test starts it itself (a broker that appears late).
    """
    @pytest.fixture
    def broker(tmp_path: Path) -> Iterator[Mosquitto]:
        instance = Mosquitto(tmp_path / "mosquitto", users=users)
        try:
            if start:
                instance.start()
            yield instance
        finally:
            instance.stop()

    return broker


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A real paho client subscribed to `topics`, recording every message it receives.

    Logs in as the broker's first user when it has users. `wait` blocks (bounded) until a
    matching message arrives, so tests never sleep a fixed time.
    """

    def __init__(self, broker: Mosquitto, topics: tuple[str, ...] = ("#",),
                 *, timeout: float = 5.0):
        self.broker = broker
        self.topics = topics
        self.timeout = timeout
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{id(self)}")
        if broker.users:
            self.client.username_pw_set(*next(iter(broker.users.items())))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe([(topic, 1) for topic in self.topics])

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def __enter__(self) -> Subscriber:
        self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        if not self._subscribed.wait(self.timeout):
            raise TimeoutError(f"no SUBACK from {self.broker.host}:{self.broker.port}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def received(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait(self, topic: str, where: Callable[[Received], bool] = lambda m: True, *,
             after: int = 0, timeout: float | None = None) -> Received:
        """The first message on `topic` matching `where` among those received from index
        `after` on (see `mark`), waiting at most `timeout` seconds for it."""
        def find() -> Received | None:
            return next((m for m in self.messages[after:] if m.topic == topic and where(m)),
                        None)
        with self._cond:
            found = self._cond.wait_for(find, self.timeout if timeout is None else timeout)
        if found is None:
            seen = sorted({m.topic for m in self.messages})
            raise TimeoutError(f"no matching message on {topic!r}; topics seen: {seen}")
        return found

    def mark(self) -> int:
        """How many messages have arrived so far: pass as `after` to wait for newer ones."""
        with self._cond:
            return len(self.messages)

    def publish(self, topic: str, payload: str, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(self.timeout)
