"""A python-can interface for tests: a virtual bus whose sends fail like a SocketCAN link in
bus-off (ENETDOWN) while `DOWN` is set. Registered under INTERFACE by the test using it."""

from __future__ import annotations

import errno
import threading

import can
from can.interfaces.virtual import VirtualBus

INTERFACE = "test-flaky"
DOWN = threading.Event()


class FlakyBus(VirtualBus):
    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        if DOWN.is_set():
            raise can.CanOperationError("Network is down", error_code=errno.ENETDOWN)
        super().send(msg, timeout)
