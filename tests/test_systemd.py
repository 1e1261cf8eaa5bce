"""sd_notify over a real unix datagram socket: readiness, status, and the watchdog."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import canbridge_cmd, subprocess_env

from canbridge.systemd import Notifier

FRESH = {"lynk": {"state": "ok", "stale_secs": 0.0}, "mqtt": {"state": "ok"}}


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[socket.socket]:
    """The service manager's end: a datagram socket bound in tmp_path."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "notify"))
    server.setblocking(False)
    yield server
    server.close()


def received(server: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(server.recv(4096).decode())
        except BlockingIOError:
            return out


def notifier(tmp_path: Path, clock: FakeMonotonic | None = None, *, max_stale_secs: float = 600,
             **env: str) -> Notifier:
    made = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "notify"), **env},
                                     max_stale_secs=max_stale_secs,
                                     monotonic=clock or FakeMonotonic())
    assert made is not None
    return made


def test_not_under_systemd(caplog: pytest.LogCaptureFixture) -> None:
    assert Notifier.from_environment({}, max_stale_secs=600) is None
    assert Notifier.from_environment({"NOTIFY_SOCKET": ""}, max_stale_secs=600) is None
    assert Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"}, max_stale_secs=600) is None
    assert caplog.messages == ["NOTIFY_SOCKET=vsock:2:1234 is not a unix socket: "
                               "not notifying systemd"]


def test_ready_status_stopping(tmp_path: Path, systemd: socket.socket) -> None:
    n = notifier(tmp_path)
    n.ready()
    n.status("pipeline battery: 3 components\nrunning")
    n.stopping()
    assert received(systemd) == ["READY=1", "STATUS=pipeline battery: 3 components running",
                                 "STOPPING=1"]
    n.close()


def test_abstract_socket_names() -> None:
    name = f"canbridge-test-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    try:
        n = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name}, max_stale_secs=600)
        assert n is not None
        n.ready()
        assert server.recv(100) == b"READY=1"
    finally:
        server.close()


def test_watchdog_pings_every_half_period(tmp_path: Path, systemd: socket.socket) -> None:
    clock = FakeMonotonic()
    n = notifier(tmp_path, clock, WATCHDOG_USEC="2000000")
    sent = []
    asked: list[float] = []

    def health() -> dict[str, dict[str, object]]:
        asked.append(clock.now)
        return FRESH

    for _ in range(9):  # the engine ticks every 0.5 s
        n.tick(health)
        sent.append(received(systemd))
        clock.now += 0.5
    assert sent == [["WATCHDOG=1"], [], ["WATCHDOG=1"], [], ["WATCHDOG=1"], [],
                    ["WATCHDOG=1"], [], ["WATCHDOG=1"]]
    assert len(asked) == 5  # every component's status only when a ping is due


def test_no_watchdog_without_watchdog_usec_or_for_another_pid(
        tmp_path: Path, systemd: socket.socket) -> None:
    for env in ({}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "junk"},
                {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}):
        clock = FakeMonotonic()
        n = notifier(tmp_path, clock, **env)
        for _ in range(4):
            n.tick(lambda: FRESH)
            clock.now += 1
        assert received(systemd) == [], env
    n = notifier(tmp_path, WATCHDOG_USEC="1000000", WATCHDOG_PID=str(os.getpid()))
    n.tick(lambda: FRESH)
    assert received(systemd) == ["WATCHDOG=1"]
    assert n.watchdog_secs == 1.0
    assert notifier(tmp_path, WATCHDOG_USEC="2500000").watchdog_secs == 2.5


def test_watchdog_stops_while_battery_data_is_stale(
        tmp_path: Path, systemd: socket.socket, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeMonotonic()
    n = notifier(tmp_path, clock, max_stale_secs=600, WATCHDOG_USEC="2000000")
    caplog.set_level(logging.INFO, logger="canbridge.systemd")

    def tick(health: dict[str, dict[str, object]]) -> list[str]:
        n.tick(lambda: health)
        clock.now += 0.5
        return received(systemd)

    def stale(secs: float) -> dict[str, dict[str, object]]:
        return {**FRESH, "lynk": {"state": "stale", "stale_secs": secs},
                "inverter": {"state": "safe", "stale_secs": secs - 3}}

    assert tick(FRESH) == ["WATCHDOG=1"]
    assert tick(stale(600.0)) == []
    assert tick(stale(600.0)) == ["WATCHDOG=1"]  # at the limit: still pinging
    # Health is looked at when a ping is due (each half period), not every tick.
    assert tick(stale(600.5)) == []
    message = ("lynk: battery data stale for 600.6 s (more than max_stale_secs 600): "
               "watchdog pings withheld, systemd will restart canbridge")
    assert tick(stale(600.6)) == [f"STATUS={message}"]
    for secs in range(601, 611):
        assert tick(stale(secs)) == []
    assert caplog.messages == [message]  # once, not every tick
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert tick(FRESH) == ["STATUS=running", "WATCHDOG=1"]  # withheld: checked every tick
    assert caplog.messages[1:] == ["battery data fresh again: watchdog pings resumed"]
    assert tick(FRESH) == []
    assert tick(FRESH) == ["WATCHDOG=1"]


@pytest.mark.parametrize("order", [("lynk", "rs485"), ("rs485", "lynk")])
def test_the_stalest_component_is_named(tmp_path: Path, systemd: socket.socket,
                                        caplog: pytest.LogCaptureFixture,
                                        order: tuple[str, str]) -> None:
    stale = {"lynk": {"stale_secs": 900.0}, "rs485": {"stale_secs": 700.0}}
    notifier(tmp_path, max_stale_secs=600, WATCHDOG_USEC="2000000").tick(
        lambda: {name: stale[name] for name in order})
    assert caplog.messages == ["lynk: battery data stale for 900 s (more than max_stale_secs "
                               "600): watchdog pings withheld, systemd will restart canbridge"]


def test_odd_status_values_are_not_stale(tmp_path: Path, systemd: socket.socket) -> None:
    n = notifier(tmp_path, WATCHDOG_USEC="1000000", max_stale_secs=1)
    n.tick(lambda: {"a": {"stale_secs": None}, "b": {"stale_secs": True},
                    "c": {"stale_secs": "9"}, "d": {}})
    assert received(systemd) == ["WATCHDOG=1"]


def test_a_vanished_socket_is_reported_once(tmp_path: Path, systemd: socket.socket,
                                            caplog: pytest.LogCaptureFixture) -> None:
    n = notifier(tmp_path)
    (tmp_path / "notify").unlink()
    n.ready()
    n.status("x")
    assert len(caplog.messages) == 1
    assert caplog.messages[0].startswith(f"cannot notify systemd at '{tmp_path / 'notify'}': ")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as back:  # systemd back: told again
        back.bind(str(tmp_path / "notify"))          # when the next failure starts
        n.status("y")
        assert back.recv(100) == b"STATUS=y"
    (tmp_path / "notify").unlink()
    n.status("z")
    assert len(caplog.messages) == 2


def test_a_wedged_engine_stops_the_watchdog(tmp_path: Path, systemd: socket.socket) -> None:
    """`canbridge run` under a fake systemd: READY, pings, then silence once a component
    blocks the engine thread forever (systemd would then kill and restart it)."""
    pipeline = tmp_path / "wedge.toml"
    pipeline.write_text(
        '[status]\nfile = "status.json"\n'
        '[sources.ticker]\ntype = "test-ticker"\nperiod = 0.05\n'
        '[sinks.wedge]\ntype = "test-wedge"\ninputs = ["ticker"]\nafter = 30\n')
    env = subprocess_env(NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="400000")
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(canbridge_cmd("run", str(pipeline)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    systemd.settimeout(1.5)  # three housekeeping ticks without a ping: wedged
    messages = []
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                messages.append(systemd.recv(100).decode())
            except TimeoutError:
                break
        assert proc.poll() is None, "the process must still be alive, only wedged"
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert messages[0] == "READY=1", err
    assert messages.count("WATCHDOG=1") >= 2, messages
    assert set(messages[1:]) == {"WATCHDOG=1"}
