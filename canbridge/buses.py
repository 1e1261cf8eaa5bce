"""Buses: one python-can bus per `[buses.NAME]` table, shared by every component on it.

A `BusHandle` owns the python-can bus object, its reader thread and its record file.
Components send through `BusHandle.send`, which never raises and never blocks for long. A
send that fails because nothing acknowledges (the other node is off: ENOBUFS on socketcan)
is counted and reported once per episode, and the bus stays open: reception never stops for
a send failure. Only a bus that is really down (the interface is gone, or bus-off that the
kernel does not restart: ENODEV, ENETDOWN, ...) or whose reception fails is closed and
reopened with backoff by its reader thread, away from the engine.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

import can

from canbridge.clock import Clock
from canbridge.recordfile import RecordFile
from canbridge.schema import did_you_mean

log = logging.getLogger("canbridge.bus")

FAILURES_BEFORE_REOPEN = 5
DOWN_ERRNOS = frozenset({errno.ENODEV, errno.ENETDOWN, errno.ENXIO, errno.EBADF,
                         errno.ENETUNREACH})
DOWN_TEXTS = ("network is down", "no such device", "bad file descriptor")
"""A send failure that means the bus itself is gone, not that nothing acknowledged."""
NOTHING_TO_READ = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
SEND_TIMEOUT = 0.01
RECV_TIMEOUT = 1.0
"""How long a reader waits for a frame before it looks at stop and reopen requests: an idle
bus wakes its thread once a second (a stop still ends within 2 s)."""
READER_JOIN_SECS = 0.05
"""How long closing a bus waits for its reader: one inside its receive call ends by itself."""
RECORD_CLOSE_SECS = 1.0
"""How long closing a bus waits for its record file's last lines (a healthy disk: a moment)."""

BUS_LEVEL_KEYS = frozenset({"fd", "data_bitrate", "timing", "auto_reset", "config_context",
                            "ignore_config", "context"})
"""Keys python-can's `can.Bus` itself reads, whatever the interface."""
OWN_KEYS = ("interface", "channel", "bitrate")


def interface_keys(interface: str) -> frozenset[str] | None:
    """The keyword arguments `interface` takes, or None when that is not known (its module
    does not import here: a driver missing on this machine)."""
    try:
        module_name, class_name = can.interfaces.BACKENDS[interface]
        cls = getattr(importlib.import_module(module_name), class_name)
    except Exception:  # any failure of a third-party driver's import means "not known"
        return None
    names = set(BUS_LEVEL_KEYS)
    for init in (cls.__init__, can.BusABC.__init__):
        names.update(name for name, p in inspect.signature(init).parameters.items()
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return frozenset(names - {"self"})


def options_problems(interface: str, options: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(key, problem, warning) for keys of a bus's `options` table: python-can passes an
    unknown one on silently, so a misspelt option would just not take effect."""
    problems = [(key, f"say it as the bus's own `{key}`, not inside `options`", False)
                for key in OWN_KEYS if key in options]
    known = interface_keys(interface)
    if known is not None:
        problems += [(key, f"the \"{interface}\" interface takes no option \"{key}\"; python-can "
                      f"would ignore it{did_you_mean(key, known)}", True)
                     for key in options if key not in known and key not in OWN_KEYS]
    return problems


class BusHandle:
    """One named bus: send, receive (via the engine), record, recover."""

    def __init__(self, name: str, config: dict[str, Any], clock: Clock, *,
                 dry_run: bool = False, opener: Callable[[], can.BusABC] | None = None):
        self.name = name
        self.config = config
        self.clock = clock
        self.dry_run = dry_run
        self.channel_label = str(config.get("channel") or name)
        self._opener = opener or self._open_python_can
        self._bus: can.BusABC | None = None
        self._lock = threading.Lock()
        self._recorder: RecordFile | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consecutive_failures = 0
        self._failing = False  # in a failure episode: repeats are logged at debug level
        self._told_send_failed = False  # so its end is told too, however short it was
        self._episode_reopens = 0
        self._told_at_max = False
        self._reopen = threading.Event()
        self.state = "closed"
        self.last_error: str | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.frames_suppressed = 0
        self.send_errors = 0
        self.reopens = 0

    def _open_python_can(self) -> can.BusABC:
        cfg = self.config
        kwargs: dict[str, Any] = dict(cfg.get("options") or {})
        if cfg.get("channel") is not None:
            kwargs["channel"] = cfg["channel"]
        if cfg.get("bitrate") is not None:
            kwargs["bitrate"] = cfg["bitrate"]
        bus = can.Bus(interface=cfg["interface"], **kwargs)
        sock = getattr(bus, "socket", None)
        if isinstance(sock, socket.socket):
            # python-can's socketcan waits until the socket is readable, then reads. A link
            # going down leaves one error on the socket; a send that takes it in between
            # would leave a blocking read waiting for a frame, on a silent bus for ever.
            sock.setblocking(False)
        return bus

    # -- life cycle -------------------------------------------------------------------

    def open(self) -> None:
        """Open the record file and the bus. A bus that cannot be opened (adapter missing,
        link down) is retried with backoff by the reader thread rather than failing the run."""
        self._open_recorder()
        try:
            self._bus = self._opener()
        except Exception as exc:
            self.last_error = str(exc) or type(exc).__name__
            self.state = "reopening"
            self._reopen.set()
            log.error("bus %s: cannot open (%s); retrying in the background", self.name,
                      self.last_error)
            return
        self.state = "ok"

    def _open_recorder(self) -> None:
        record = self.config.get("record")
        if record:
            self._recorder = RecordFile(str(record), self.channel_label, self.name)

    @property
    def record_errors(self) -> int:
        return self._recorder.errors if self._recorder is not None else 0

    def start_reader(self, deliver: Callable[[BusHandle, can.Message], None]) -> None:
        """Start the thread that hands every received frame to `deliver`."""
        self._thread = threading.Thread(target=self._read_loop, args=(deliver,),
                                        name=f"bus-{self.name}", daemon=True)
        self._thread.start()

    def stop_reader(self) -> None:
        """Tell the reader thread to end; `close()` waits for it."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # A reader inside its receive call ends by itself within RECV_TIMEOUT: a daemon
            # thread that, once stopped, delivers nothing and ignores what fails.
            self._thread.join(timeout=READER_JOIN_SECS)
        with self._lock:
            if self._bus is not None:
                self._shutdown_bus(self._bus)
                self._bus = None
        if self._recorder is not None:
            # A full-speed replay is done with the CAN path: its record is written whole.
            self._recorder.close(None if self.clock.virtual else RECORD_CLOSE_SECS)
        self.state = "closed"

    @staticmethod
    def _shutdown_bus(bus: can.BusABC) -> None:
        try:
            bus.shutdown()
        except Exception as exc:  # a dying adapter may fail to close; nothing to save
            log.debug("shutdown failed: %r", exc)

    # -- traffic ------------------------------------------------------------------------

    def send(self, msg: can.Message) -> bool:
        """Transmit `msg` (stamped with pipeline time, recorded). False if it did not go out."""
        msg.timestamp = self.clock.now()
        msg.is_rx = False
        msg.channel = self.channel_label
        if self.dry_run:
            self.frames_suppressed += 1
            log.debug("%s: dry run, not sent: %s", self.name, msg)
            return False
        if not self._transmit(msg):
            return False
        self.frames_out += 1
        self.record(msg)
        return True

    def _transmit(self, msg: can.Message) -> bool:
        bus = self._bus
        if bus is None or self.state != "ok":
            self.send_errors += 1
            return False
        try:
            bus.send(msg, timeout=SEND_TIMEOUT)
        except (can.CanError, OSError, ValueError) as exc:
            self._send_failed(exc)
            return False
        self._consecutive_failures = 0
        self._traffic_works()
        return True

    def _traffic_works(self) -> None:
        """A frame went out or came in: a failure episode, if any, is over."""
        if (self._failing or self._told_send_failed) and self.state == "ok":
            self._failing = self._told_send_failed = False
            self._episode_reopens = 0
            log.warning("bus %s: working again", self.name)

    def _send_failed(self, exc: BaseException) -> None:
        self.send_errors += 1
        self._consecutive_failures += 1
        self.last_error = str(exc) or type(exc).__name__
        quiet = self._failing  # one episode, however long, is told once
        if self._consecutive_failures == 1 and not quiet:
            log.warning("bus %s: send failed: %s", self.name, self.last_error)
            self._told_send_failed = True
        if not _bus_down(exc):
            # Nothing acknowledged (the other node is off): keep the bus open and reading.
            self._failing = True
            return
        if self._consecutive_failures >= FAILURES_BEFORE_REOPEN and self.state == "ok":
            self.state = "reopening"
            self._failing = True
            (log.debug if quiet else log.error)(
                "bus %s: %d sends failed in a row, reopening", self.name,
                self._consecutive_failures)
            self._reopen.set()

    def record(self, msg: can.Message) -> None:
        recorder = self._recorder
        if recorder is not None:
            # Live pipeline time is monotonic; a record is read beside other logs, so it gets
            # Unix time.
            recorder.write(msg, msg.timestamp if self.clock.virtual
                           else self.clock.wall_time(msg.timestamp))

    def flush(self) -> None:
        if self._recorder is not None:
            self._recorder.flush()

    def _read_loop(self, deliver: Callable[[BusHandle, can.Message], None]) -> None:
        # Backoff grows across reopen cycles until traffic really flows again: a socketcan
        # bus reopens fine while nothing on the wire acknowledges (inverter switched off).
        backoff = 0.0
        while not self._stop.is_set():
            if self._reopen.is_set():
                if backoff and self._stop.wait(backoff):
                    return
                backoff = min(max(2 * backoff, BACKOFF_FIRST), BACKOFF_MAX)
                self._try_reopen(at_max=backoff == BACKOFF_MAX)
                continue
            if backoff and not self._failing:
                backoff = 0.0
            bus = self._bus
            if bus is None:
                self._reopen.set()
                continue
            try:
                msg = bus.recv(timeout=RECV_TIMEOUT)
            except Exception as exc:
                if self._stop.is_set():
                    return
                if _errno(exc) in NOTHING_TO_READ:
                    continue  # readable for an error that a send took first: nothing to read
                self.last_error = str(exc) or type(exc).__name__
                (log.debug if self._failing else log.error)(
                    "bus %s: receive failed (%s), reopening", self.name, self.last_error)
                self._failing = True
                self.state = "reopening"
                self._reopen.set()
                continue
            if msg is not None and not self._stop.is_set():
                self._traffic_works()
                self.frames_in += 1
                deliver(self, msg)

    def _try_reopen(self, *, at_max: bool) -> None:
        with self._lock:
            if self._bus is not None:
                self._shutdown_bus(self._bus)
                self._bus = None
            try:
                self._bus = self._opener()
            except Exception as exc:
                self.last_error = str(exc) or type(exc).__name__
                if at_max and not self._told_at_max:
                    self._told_at_max = True
                    log.error("bus %s: still cannot open (%s); retrying every %g s",
                              self.name, self.last_error, BACKOFF_MAX)
                return
            self.reopens += 1
            self._episode_reopens += 1
            self._consecutive_failures = 0
            self._told_at_max = False
            # Clear the request before "ok": sends are refused until "ok", so a failure that
            # asks for the next reopen can only come after this and is never wiped out.
            self._reopen.clear()
            self.state = "ok"
        (log.warning if self._episode_reopens == 1 else log.debug)("bus %s: reopened",
                                                                   self.name)

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "frames_suppressed": self.frames_suppressed,
            "send_errors": self.send_errors,
            "reopens": self.reopens,
            "record_errors": self.record_errors,
            "last_error": self.last_error,
        }


def _errno(exc: BaseException) -> int | None:
    """The OS error number behind a python-can error, if any."""
    code = getattr(exc, "error_code", None) or getattr(exc, "errno", None)
    cause = exc.__cause__ or exc.__context__
    if code is None and isinstance(cause, OSError):
        code = cause.errno
    return code


def _bus_down(exc: BaseException) -> bool:
    """Whether a send failure means the bus itself is gone (reopen it) rather than that no
    other node acknowledged (keep it open)."""
    code = _errno(exc)
    if code is not None:
        return code in DOWN_ERRNOS
    text = str(exc).lower()
    return any(part in text for part in DOWN_TEXTS)
