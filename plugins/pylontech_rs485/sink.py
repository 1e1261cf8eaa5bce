"""Sink `pylontech-rs485`: canbridge plays a Pylontech battery on a serial port.

The inverter polls; a thread of the sink's own reads the port, answers each request for
this `address` from the latest decision of the core's stop model (the same safety rules as
the CAN sink: freshness including the alarm report, stop limits with the flags, caps,
profiles), and never touches the engine thread. A request for another address is left to
the battery that has it (silence); a command a battery does not answer here gets RTN 0x04
(CID2 invalid); a frame that cannot be read is counted and ignored; more than
`max_answers_per_sec` requests a second are ignored (a poll storm). A port that disappears
(a USB adapter unplugged) is opened again with backoff, like a CAN bus.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import serial

from canbridge import (
    REQUIRED,
    Choice,
    Clock,
    Context,
    Integer,
    Number,
    Option,
    Text,
    Timer,
    Update,
)
from canbridge.component import RateLimitedLog
from canbridge.safety import (
    INVERTER_OPTIONS,
    READS,
    Decision,
    InverterSink,
    StopModel,
)

from . import frames, info

READ_TIMEOUT = 0.2
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
MAX_FRAME = 4096
"""Bytes without a CR before what was read is dropped as garbage."""

# CID2 of each command a Pylontech battery answers here (V3.3 numbering).
PROTOCOL_VERSION, MANUFACTURER, ANALOG, ALARMS, PARAMETERS, MANAGEMENT = (
    0x4F, 0x51, 0x42, 0x44, 0x47, 0x92)


class PylontechRs485Sink(InverterSink):
    """Answers an inverter's Pylontech RS485 polls with the battery's state."""

    type_name = "pylontech-rs485"
    summary = ("play a Pylontech battery on an RS485 port: answer the inverter's polls "
               "(0x4F, 0x51, 0x42, 0x44, 0x47, 0x92)")
    reads = READS | {"capacity_nominal"}  # the analog answer (0x42) carries the capacity
    options = (
        Option("port", Text(non_empty=True), REQUIRED,
               "serial port of the RS485 adapter, e.g. /dev/ttyUSB0 (a /dev/serial/by-id/ "
               "name survives replugging)"),
        INVERTER_OPTIONS[0],
        Option("baudrate", Choice((1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)),
               9600, "bit rate the inverter polls at"),
        Option("address", Integer(min=0, max=255), 2,
               "battery address answered (Pylontech masters are 2); others are left alone"),
        Option("period_secs", Number(min=0.1, max=2.5), 1.0,
               "how often the answers are brought up to date"),
        *INVERTER_OPTIONS[1:],
        Option("manufacturer", Text(max_length=10, ascii=True, non_empty=True), "PYLON",
               "manufacturer and device name answered to 0x51"),
        Option("cells", Integer(min=1, max=32), 16,
               "cells reported in 0x42/0x44 (the LYNK II reports none: each is the pack "
               "voltage / cells)"),
        Option("capacity_ah", Number(min=1.0, max=16000.0), 100.0,
               "capacity reported when the battery reports no capacity_nominal (Ah)"),
        Option("charge_temperature_min", Number(min=-40.0, max=60.0), 0.0,
               "lowest charge temperature answered in 0x47 (degC)"),
        Option("charge_temperature_max", Number(min=-40.0, max=80.0), 45.0,
               "highest charge temperature answered in 0x47 (degC)"),
        Option("discharge_temperature_min", Number(min=-40.0, max=60.0), -20.0,
               "lowest discharge temperature answered in 0x47 (degC)"),
        Option("discharge_temperature_max", Number(min=-40.0, max=80.0), 55.0,
               "highest discharge temperature answered in 0x47 (degC)"),
        Option("max_answers_per_sec", Number(min=1.0, max=1000.0), 20.0,
               "requests answered per second at most; a poll storm beyond is ignored"),
    )

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        self.model = StopModel(self, sending=f"answering on {self.config['port']}")
        self.decision: Decision | None = None  # what the port thread answers from
        self.capacity_ah = float(self.config["capacity_ah"])
        self.requests = 0
        self.answers = 0
        self.malformed = 0
        self.ignored = 0
        self.reopens = 0
        self.port_state = "closed"
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._timer: Timer | None = None
        self._tokens = float(self.config["max_answers_per_sec"])
        self._tokens_at = time.monotonic()
        # The port thread's own: real time, whatever clock the pipeline runs on.
        self._port_log = RateLimitedLog(self.log, Clock())

    # -- engine thread ------------------------------------------------------------------

    def start(self) -> None:
        self._timer = self.clock.every(self.config["period_secs"], self._refresh)
        self._thread = threading.Thread(target=self._serve, name=f"rs485-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def on_update(self, update: Update) -> None:
        self.model.accept(update)
        capacity = update.values.get("capacity_nominal")
        if isinstance(capacity, int | float) and not isinstance(capacity, bool) and capacity > 0:
            self.capacity_ah = float(capacity)

    def _refresh(self) -> None:
        self.decision = self.model.decide(self.clock.now())  # None: nothing to answer

    # -- the port thread ----------------------------------------------------------------

    def _serve(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                port = serial.Serial(self.config["port"], self.config["baudrate"],
                                     timeout=READ_TIMEOUT, exclusive=True)
            except (serial.SerialException, OSError, ValueError) as exc:
                self._port_failed(f"cannot open {self.config['port']}: {exc}")
                backoff = min(max(2 * backoff, BACKOFF_FIRST), BACKOFF_MAX)
                if self._stop.wait(backoff):
                    return
                continue
            if self.port_state == "reopening":
                self.reopens += 1
                self.log.warning("%s: %s open again", self.name, self.config["port"])
            self.port_state = "open"
            backoff = 0.0
            try:
                self._read(port)
            except (serial.SerialException, OSError) as exc:
                self._port_failed(f"{self.config['port']} failed: {exc}")
            finally:
                port.close()

    def _port_failed(self, error: str) -> None:
        if self.port_state != "reopening":
            self.log.error("%s: %s; trying again with backoff", self.name, error)
        self.port_state = "reopening"
        self.last_error = error

    def _read(self, port: serial.Serial) -> None:
        pending = b""
        while not self._stop.is_set():
            chunk = port.read(port.in_waiting or 1)
            if not chunk:
                continue
            pending += chunk
            while b"\r" in pending:
                line, pending = pending.split(b"\r", 1)
                start = line.rfind(b"~")
                if start < 0:
                    self._malformed("bytes without a frame start", None)
                    continue
                answer = self._answer_guarded(line[start:] + b"\r")
                if answer is not None:
                    port.write(answer)
            if len(pending) > MAX_FRAME:
                pending = b""
                self._malformed("over 4096 bytes without an end of frame", None)

    def _answer_guarded(self, raw: bytes) -> bytes | None:
        """`answer`, where a fault in building one answer costs that answer (silence), not
        the port thread: the next request, a 0x92 with its stop flags above all, still gets
        one."""
        try:
            return self.answer(raw)
        except Exception as exc:  # any fault: this thread must go on answering
            self.errors += 1
            self.last_error = f"answering {raw[:13]!r}: {exc!r}"
            self._port_log.error("fault", "%s: could not answer %r: %r", self.name, raw[:13],
                                 exc)
            return None

    def answer(self, raw: bytes) -> bytes | None:
        """The response to one request frame, or None for silence (on the port thread)."""
        address = self.config["address"]
        try:
            request = frames.decode(raw)
        except frames.FrameError as exc:
            self._malformed(str(exc), _claimed_address(raw))
            return None  # counted and ignored: its address cannot be trusted
        if request.adr != address or request.cid1 != frames.CID1_BATTERY:
            return None  # another battery's, or not a battery command
        self.requests += 1
        if not self._allowed():
            self.ignored += 1
            self._port_log.warning("storm", "%s: more than %g requests a second: ignoring "
                                   "the rest", self.name, self.config["max_answers_per_sec"])
            return None
        built = self._info(request.cid2)
        if built is None:
            return None  # no battery data yet: nothing at all rather than zeros
        rtn, payload = built
        self.answers += 1
        return frames.encode(request.ver, address, frames.CID1_BATTERY, rtn, payload)

    def _info(self, cid2: int) -> tuple[int, bytes] | None:
        cfg = self.config
        if cid2 == PROTOCOL_VERSION:
            return frames.RTN_NORMAL, b""
        if cid2 == MANUFACTURER:
            return frames.RTN_NORMAL, info.manufacturer(cfg["manufacturer"])
        builders: dict[int, Callable[[Decision], bytes]] = {
            ANALOG: lambda d: info.analog(d, cfg["address"], cfg["cells"], self.capacity_ah),
            ALARMS: lambda d: info.alarms(d, cfg["address"], cfg["cells"]),
            PARAMETERS: lambda d: info.parameters(
                d, cfg["cells"], (cfg["charge_temperature_min"], cfg["charge_temperature_max"]),
                (cfg["discharge_temperature_min"], cfg["discharge_temperature_max"])),
            MANAGEMENT: lambda d: info.management(d, cfg["address"]),
        }
        builder = builders.get(cid2)
        if builder is None:
            self._port_log.log(logging.INFO, ("cid2", cid2), "%s: command 0x%02X is not one "
                               "a Pylontech battery answers here: CID2 invalid", self.name, cid2)
            return frames.RTN_CID2, b""
        decision = self.decision
        return None if decision is None else (frames.RTN_NORMAL, builder(decision))

    def _allowed(self) -> bool:
        """A token bucket in real time: answers at most max_answers_per_sec."""
        rate = self.config["max_answers_per_sec"]
        now = time.monotonic()
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _malformed(self, why: str, claimed: int | None) -> None:
        self.malformed += 1
        self._port_log.warning("malformed", "%s: ignored a malformed frame%s: %s", self.name,
                               "" if claimed is None else f" for address {claimed}", why)

    # -- health -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            **self.model.status(self.clock.now()),
            "port": self.port_state,
            "frames_in": self.requests,
            "frames_out": self.answers,
            "malformed": self.malformed,
            "ignored": self.ignored,
            "reopens": self.reopens,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_seen_age": self.age(self.model.oldest_update()),
        }


def _claimed_address(raw: bytes) -> int | None:
    try:
        return int(raw[3:5], 16)
    except ValueError:
        return None
