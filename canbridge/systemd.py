"""systemd notification: readiness, status text and the watchdog (sd_notify, in plain stdlib).

The engine calls `Notifier.tick` from its own thread about twice a second, so a wedged
engine stops pinging by itself and systemd restarts the service after `WatchdogSec`. The
pings also stop while battery data has been stale longer than `max_stale_secs`: a restart
reopens the CAN adapters, which is the one cure canbridge cannot apply from inside.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from canbridge.schema import Number, Option

log = logging.getLogger("canbridge.systemd")

WATCHDOG_OPTIONS: tuple[Option, ...] = (
    Option("max_stale_secs", Number(min=0, min_exclusive=True, max=86400.0), default=600.0,
           help="battery data stale longer than this stops the systemd watchdog pings, so "
                "systemd restarts canbridge (only under systemd with WatchdogSec set)"),
)


class Notifier:
    """Talks to the service manager through the NOTIFY_SOCKET datagram socket."""

    def __init__(self, address: str | bytes, *, watchdog_secs: float | None,
                 max_stale_secs: float,
                 monotonic: Callable[[], float] = time.monotonic):
        self.address = address
        self.watchdog_secs = watchdog_secs
        self.max_stale_secs = max_stale_secs
        self._monotonic = monotonic
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)  # never wait for systemd on the engine thread
        self._last_ping = -math.inf
        self._withholding = False
        self._send_failed = False

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ, *, max_stale_secs: float,
                         monotonic: Callable[[], float] = time.monotonic) -> Notifier | None:
        """A notifier for the manager that started us, or None when not run by one."""
        raw = env.get("NOTIFY_SOCKET", "")
        if not raw:
            return None
        if raw.startswith("@"):
            address: str | bytes = b"\0" + raw[1:].encode()  # Linux abstract socket
        elif raw.startswith("/"):
            address = raw
        else:
            log.warning("NOTIFY_SOCKET=%s is not a unix socket: not notifying systemd", raw)
            return None
        return cls(address, watchdog_secs=_watchdog_secs(env),
                   max_stale_secs=max_stale_secs, monotonic=monotonic)

    def ready(self) -> None:
        self._send("READY=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        """One line for `systemctl status`."""
        self._send("STATUS=" + text.replace("\n", " "))

    def tick(self, health: Callable[[], Mapping[str, Mapping[str, Any]]]) -> None:
        """Ping the watchdog when one is due and the pipeline is healthy. `health()` (every
        component's status) is asked for only then, or while pings are withheld: not once a
        second on an idle Pi."""
        if self.watchdog_secs is None:
            return
        now = self._monotonic()
        if not self._withholding and now - self._last_ping < self.watchdog_secs / 2:
            return
        stale = self._stalest(health())
        if stale is not None:
            if not self._withholding:
                self._withholding = True
                name, secs = stale
                message = (f"{name}: battery data stale for {secs:g} s (more than "
                           f"max_stale_secs {self.max_stale_secs:g}): watchdog pings withheld, "
                           "systemd will restart canbridge")
                log.error("%s", message)
                self.status(message)
            return
        if self._withholding:
            self._withholding = False
            log.warning("battery data fresh again: watchdog pings resumed")
            self.status("running")
        if now - self._last_ping >= self.watchdog_secs / 2:
            self._last_ping = now
            self._send("WATCHDOG=1")

    def _stalest(self, health: Mapping[str, Mapping[str, Any]]) -> tuple[str, float] | None:
        """The component whose data is stale longest, when beyond the limit."""
        worst: tuple[str, float] | None = None
        for name, status in health.items():
            secs = status.get("stale_secs") if isinstance(status, Mapping) else None
            if (isinstance(secs, int | float) and not isinstance(secs, bool)
                    and secs > self.max_stale_secs and (worst is None or secs > worst[1])):
                worst = (name, float(secs))
        return worst

    def _send(self, message: str) -> None:
        try:
            self._socket.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._send_failed:  # once: the same cause would repeat every tick
                log.warning("cannot notify systemd at %r: %s", self.address, exc)
            self._send_failed = True
            return
        self._send_failed = False

    def close(self) -> None:
        self._socket.close()


def _watchdog_secs(env: Mapping[str, str]) -> float | None:
    """The watchdog period systemd expects, or None when there is none for this process."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1e6
