"""CAN bus recovery: failing sends are counted, the bus is reopened with backoff by its reader
thread, traffic flows again afterwards, and other buses carry on meanwhile."""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import can
import conftest
import pytest
from can.interfaces.virtual import VirtualBus

from canbridge import Clock
from canbridge import buses as buses_module
from canbridge.buses import BusHandle
from canbridge.testing import virtual_bus

BACKOFF_FIRST = 0.02
BACKOFF_MAX = 0.08


class Faults:
    """What the test breaks: sends (the link down, or nothing acknowledging), receives, or the
    adapter itself (opening fails)."""

    def __init__(self) -> None:
        self.sends_fail = threading.Event()
        self.send_error: tuple[str, int | None] | BaseException = (
            "Network is down", errno.ENETDOWN)
        self.recv_fails = threading.Event()
        self.unplugged = threading.Event()
        self.open_attempts: list[float] = []
        self.opened: list[FlakyBus] = []


class FlakyBus(VirtualBus):
    def __init__(self, channel: str, faults: Faults):
        super().__init__(channel=channel)
        self.faults = faults

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        if self.faults.sends_fail.is_set():
            error = self.faults.send_error
            if isinstance(error, BaseException):
                raise error
            text, code = error
            raise can.CanOperationError(text, error_code=code)
        super().send(msg, timeout)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        if self.faults.recv_fails.is_set():
            raise can.CanOperationError("Network is down")
        return super()._recv_internal(timeout)


def flaky_opener(channel: str, faults: Faults) -> Callable[[], can.BusABC]:
    def opener() -> can.BusABC:
        faults.open_attempts.append(time.monotonic())
        if faults.unplugged.is_set():
            raise can.CanInitializationError("No such device")
        bus = FlakyBus(channel, faults)
        faults.opened.append(bus)
        return bus
    return opener


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buses_module, "BACKOFF_FIRST", BACKOFF_FIRST)
    monkeypatch.setattr(buses_module, "BACKOFF_MAX", BACKOFF_MAX)
    monkeypatch.setattr(buses_module, "RECV_TIMEOUT", 0.002)  # gaps are then the backoff


class Received:
    """The engine's side: frames the reader threads deliver, by bus name."""

    def __init__(self) -> None:
        self.frames: queue.Queue[tuple[str, can.Message]] = queue.Queue()

    def __call__(self, bus: BusHandle, msg: can.Message) -> None:
        self.frames.put((bus.name, msg))

    def next(self, timeout: float = 2.0) -> tuple[str, int, bytes]:
        name, msg = self.frames.get(timeout=timeout)
        return name, msg.arbitration_id, bytes(msg.data)


def frame(frame_id: int, *data: int) -> can.Message:
    return can.Message(arbitration_id=frame_id, is_extended_id=False, data=list(data))


wait_until = functools.partial(conftest.wait_until, timeout=3.0, every=0.002)


@dataclass
class Rig:
    """Two buses as the engine has them, and a peer on each wire: the battery and inverter."""

    inverter: BusHandle
    battery: BusHandle
    faults: Faults
    received: Received
    inverter_peer: VirtualBus
    battery_peer: VirtualBus


@pytest.fixture
def rig(channel: str) -> Iterator[Rig]:
    clock = Clock()
    faults = Faults()
    received = Received()
    inverter = BusHandle("inverter", {"interface": "virtual", "channel": channel + "-inv"},
                         clock, opener=flaky_opener(channel + "-inv", faults))
    inverter.open()
    battery = virtual_bus("battery", channel + "-bat", clock)
    inverter_peer = VirtualBus(channel=channel + "-inv")
    battery_peer = VirtualBus(channel=channel + "-bat")
    for handle in (inverter, battery):
        handle.start_reader(received)
    yield Rig(inverter, battery, faults, received, inverter_peer, battery_peer)
    for handle in (inverter, battery):
        handle.close()
    inverter_peer.shutdown()
    battery_peer.shutdown()


def test_sends_failing_because_the_link_is_down_reopen_the_bus_with_backoff(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    inverter, faults, received, inverter_peer = (rig.inverter, rig.faults, rig.received,
                                                 rig.inverter_peer)
    caplog.set_level(logging.WARNING, logger="canbridge.bus")
    assert inverter.send(frame(0x351, 1)) is True
    assert inverter_peer.recv(1).arbitration_id == 0x351

    faults.sends_fail.set()
    faults.unplugged.set()  # the adapter is gone: reopening fails until it is back
    for _ in range(buses_module.FAILURES_BEFORE_REOPEN - 1):
        assert inverter.send(frame(0x355, 2)) is False
    assert inverter.state == "ok" and inverter.send_errors == 4  # a few failures: no reopen
    assert inverter.send(frame(0x355, 2)) is False
    assert inverter.state == "reopening"
    assert inverter.status() == {"state": "reopening", "frames_in": 0, "frames_out": 1,
                                 "frames_suppressed": 0, "send_errors": 5, "reopens": 0,
                                 "record_errors": 0,
                                 "last_error": "Network is down [Error Code 100]"}
    bus_before = faults.opened[-1]
    assert inverter.send(frame(0x356, 3)) is False  # not even tried while reopening
    assert inverter.send_errors == 6

    # Meanwhile the other bus works both ways.
    assert rig.battery.send(frame(0x100, 7)) is True
    assert rig.battery_peer.recv(1).data == bytearray([7])
    rig.battery_peer.send(frame(0x101, 8))
    assert received.next() == ("battery", 0x101, b"\x08")

    attempts_before = len(faults.open_attempts)
    wait_until(lambda: len(faults.open_attempts) >= attempts_before + 5)
    assert inverter.state == "reopening" and inverter.last_error == "No such device"
    tries = faults.open_attempts[attempts_before:attempts_before + 5]
    gaps = [later - earlier for earlier, later in itertools.pairwise(tries)]
    expected = [BACKOFF_FIRST, 2 * BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_MAX]  # doubling, capped
    assert all(gap >= want * 0.95 for gap, want in zip(gaps, expected, strict=True)), gaps

    faults.unplugged.clear()
    faults.sends_fail.clear()
    wait_until(lambda: inverter.state == "ok")
    assert inverter.reopens == 1 and faults.opened[-1] is not bus_before
    assert bus_before._open is False  # the broken bus object was shut down

    assert inverter.send(frame(0x359, 4)) is True
    msg = inverter_peer.recv(1)
    assert (msg.arbitration_id, bytes(msg.data)) == (0x359, b"\x04")
    inverter_peer.send(frame(0x305, 5))
    assert received.next() == ("inverter", 0x305, b"\x05")
    assert inverter.status() == {"state": "ok", "frames_in": 1, "frames_out": 2,
                                 "frames_suppressed": 0, "send_errors": 6, "reopens": 1,
                                 "record_errors": 0,
                                 "last_error": "No such device"}
    # One episode, told once: no line per retry.
    assert caplog.messages == [
        "bus inverter: send failed: Network is down [Error Code 100]",
        "bus inverter: 5 sends failed in a row, reopening",
        "bus inverter: still cannot open (No such device); retrying every 0.08 s",
        "bus inverter: reopened",
        "bus inverter: working again",
    ]


def test_after_a_reopen_the_failures_in_a_row_are_counted_afresh(rig: Rig) -> None:
    inverter, faults = rig.inverter, rig.faults
    faults.sends_fail.set()
    for _ in range(buses_module.FAILURES_BEFORE_REOPEN):
        inverter.send(frame(0x351))
    faults.sends_fail.clear()
    wait_until(lambda: inverter.state == "ok")
    assert inverter.reopens == 1
    faults.sends_fail.set()
    for _ in range(buses_module.FAILURES_BEFORE_REOPEN - 1):
        assert inverter.send(frame(0x351)) is False
    assert (inverter.state, inverter.reopens) == ("ok", 1)


class RecordingBus(VirtualBus):
    """A virtual bus that keeps what python-can opened it with."""

    opened: ClassVar[list[tuple[RecordingBus, dict[str, object]]]] = []

    def __init__(self, channel: str, **kwargs: object):
        super().__init__(channel=channel, **kwargs)
        RecordingBus.opened.append((self, {"channel": channel, **kwargs}))


def test_a_bus_is_opened_as_the_pipeline_says_and_shut_down_at_close(
        channel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(can.interfaces.BACKENDS, "test-recording",
                        ("test_bus_recovery", "RecordingBus"))
    monkeypatch.setattr(can.util, "VALID_INTERFACES",
                        can.util.VALID_INTERFACES | {"test-recording"})
    handle = BusHandle("inverter", {"interface": "test-recording", "channel": channel,
                                    "bitrate": 500000,
                                    "options": {"receive_own_messages": True}}, Clock())
    handle.open()
    bus, kwargs = RecordingBus.opened[-1]
    assert kwargs == {"channel": channel, "bitrate": 500000, "receive_own_messages": True}
    assert handle.state == "ok" and not bus._is_shutdown
    handle.close()
    assert (handle.state, bus._is_shutdown) == ("closed", True)


def caused_by(number: int) -> can.CanOperationError:
    error = can.CanOperationError("Failed to transmit")
    error.__cause__ = OSError(number, os.strerror(number))
    return error


@pytest.mark.parametrize(("error", "state"), [
    (("Network is down", None), "reopening"),  # a driver that gives no error code
    (("Failed to transmit: No such device", None), "reopening"),
    (("Transmit buffer full", None), "ok"),
    (("Bad file descriptor", errno.EBADF), "reopening"),
    (("Transmit buffer full", errno.ENOBUFS), "ok"),
    (caused_by(errno.ENETDOWN), "reopening"),  # the number only on the OS error behind it
    (caused_by(errno.ENOBUFS), "ok"),
])
def test_a_send_failure_reopens_only_when_it_says_the_link_is_gone(
        rig: Rig, error: tuple[str, int | None] | BaseException, state: str) -> None:
    rig.faults.send_error = error
    rig.faults.sends_fail.set()
    for _ in range(buses_module.FAILURES_BEFORE_REOPEN):
        assert rig.inverter.send(frame(0x351)) is False
    assert rig.inverter.state == state


def test_a_success_resets_the_count_of_failures_in_a_row(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    inverter, faults = rig.inverter, rig.faults
    caplog.set_level(logging.WARNING, logger="canbridge.bus")
    for _ in range(3):
        faults.sends_fail.set()
        for _ in range(buses_module.FAILURES_BEFORE_REOPEN - 1):
            assert inverter.send(frame(0x351)) is False
        faults.sends_fail.clear()
        assert inverter.send(frame(0x351)) is True
    assert inverter.state == "ok"
    assert (inverter.send_errors, inverter.frames_out, inverter.reopens) == (12, 3, 0)
    assert len(faults.open_attempts) == 1
    assert caplog.messages == [  # each episode ends with the send that went out
        "bus inverter: send failed: Network is down [Error Code 100]",
        "bus inverter: working again"] * 3


def test_a_receive_failure_reopens_the_bus(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    inverter, faults, received, inverter_peer = (rig.inverter, rig.faults, rig.received,
                                                 rig.inverter_peer)
    caplog.set_level(logging.WARNING, logger="canbridge.bus")
    faults.unplugged.set()
    faults.recv_fails.set()
    wait_until(lambda: inverter.state == "reopening")
    assert inverter.send(frame(0x351)) is False
    rig.battery_peer.send(frame(0x102, 9))  # the battery bus is not affected
    assert received.next() == ("battery", 0x102, b"\x09")
    faults.recv_fails.clear()
    faults.unplugged.clear()
    wait_until(lambda: inverter.state == "ok")
    assert inverter.reopens == 1
    inverter_peer.send(frame(0x305, 1))
    assert received.next() == ("inverter", 0x305, b"\x01")
    assert caplog.messages == ["bus inverter: receive failed (Network is down), reopening",
                               "bus inverter: reopened", "bus inverter: working again"]


def test_sends_nobody_acknowledges_never_stop_reception(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """The other node is switched off: socketcan sends fail with ENOBUFS. The bus stays open
    and reading, so the moment the node is back its frames arrive (no backoff to sit out)."""
    inverter, faults, received = rig.inverter, rig.faults, rig.received
    caplog.set_level(logging.DEBUG, logger="canbridge.bus")
    faults.send_error = ("No buffer space available", errno.ENOBUFS)
    faults.sends_fail.set()
    for _ in range(50):
        assert inverter.send(frame(0x305)) is False
    assert (inverter.state, inverter.reopens, len(faults.opened)) == ("ok", 0, 1)
    rig.inverter_peer.send(frame(0x351, 1))  # the node is back
    assert received.next(timeout=0.5) == ("inverter", 0x351, b"\x01")
    faults.sends_fail.clear()
    assert inverter.send(frame(0x305, 2)) is True
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == ["bus inverter: send failed: No buffer space available [Error Code 105]",
                    "bus inverter: working again"]
    assert inverter.send_errors == 50


def test_a_bus_missing_at_start_is_opened_when_it_appears(channel: str) -> None:
    faults = Faults()
    faults.unplugged.set()
    received = Received()
    handle = BusHandle("inverter", {"interface": "virtual", "channel": channel}, Clock(),
                       opener=flaky_opener(channel, faults))
    handle.open()
    assert handle.state == "reopening" and handle.last_error == "No such device"
    handle.start_reader(received)
    peer = VirtualBus(channel=channel)
    try:
        assert handle.send(frame(0x351)) is False
        wait_until(lambda: len(faults.open_attempts) >= 3)
        faults.unplugged.clear()
        wait_until(lambda: handle.state == "ok")
        assert handle.send(frame(0x351, 6)) is True
        assert peer.recv(1).data == bytearray([6])
    finally:
        handle.close()
        peer.shutdown()
    assert handle.state == "closed"


def test_a_send_failing_while_a_reopen_completes_is_never_lost(channel: str) -> None:
    """The engine's send can fail at any moment of the reader's reopen; whatever the
    interleaving, the bus must never be left "reopening" with no reopen pending."""
    faults = Faults()
    handle = BusHandle("inverter", {"interface": "virtual", "channel": channel}, Clock(),
                       opener=flaky_opener(channel, faults))
    handle.open()

    class Interleave(threading.Event):
        def clear(self) -> None:
            # The engine thread's fifth failed send lands while the reopen finishes.
            faults.sends_fail.set()
            handle._consecutive_failures = buses_module.FAILURES_BEFORE_REOPEN - 1
            handle.send(frame(0x351))
            super().clear()

    handle._reopen = Interleave()
    handle._reopen.set()
    handle._try_reopen(at_max=False)
    try:
        assert handle.state == "ok" or handle._reopen.is_set()
    finally:
        handle.close()
