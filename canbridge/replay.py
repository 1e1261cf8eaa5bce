"""Replay buses: a capture file stands in for hardware.

At `speed = "max"` the engine pulls frames straight from `timeline()` and runs the pipeline
clock on their timestamps. At a finite speed a pacing thread delivers them in real time
(scaled), restamped with the live pipeline clock like any received frame.
"""

from __future__ import annotations

import io
import locale
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import can

from canbridge.buses import BusHandle
from canbridge.clock import Clock

log = logging.getLogger("canbridge.bus")

LOOP_GAP_SECS = 1.0
"""Pause between the last frame of a pass and the first of the next: the protocols canbridge
speaks are 1 Hz, so a looped capture keeps their cadence."""

END_OF_REPLAY = None
"""What the pacing thread delivers once a replay that does not loop has ended."""

_CAN_ERR_FLAG = 0x20000000
SHORT_WAIT_SECS = 0.01
"""A wait between frames shorter than this is a plain sleep: a stop still comes within it,
and an interruptible wait would cost more CPU than the frame it waits for."""


class CaptureError(ValueError):
    """A capture that cannot be read; the message names the file."""


def _checked(path: str) -> Iterator[can.Message]:
    """read_capture, with any failure turned into one line naming the file."""
    frames = 0
    try:
        for msg in read_capture(path):
            frames += 1
            yield msg
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # python-can's readers raise anything on a bad file
        where = f"after frame {frames}" if frames else "at its start"
        raise CaptureError(f"{path}: not a readable capture {where} ({exc})") from None
    if frames == 0:
        raise CaptureError(f"{path}: the capture holds no frames")


def capture_problem(path: str, frames: int = 20) -> str | None:
    """Why the capture at `path` cannot be replayed (its first frames read), or None."""
    try:
        for count, _ in enumerate(_checked(path), start=1):
            if count >= frames:
                break
    except CaptureError as exc:
        return str(exc)
    return None


def read_capture(path: str) -> Iterator[can.Message]:
    """Every frame of a capture file, streamed, as python-can's `LogReader` gives them.

    candump `.log` lines of plain data frames are parsed here: python-can's reader costs
    about twice as much, and a day of LYNK II traffic is 475 000 frames. Any other line
    (remote, CAN FD, error frames, an rx/tx column) and every other format go through
    python-can itself.
    """
    if not path.lower().endswith(".log"):
        yield from can.LogReader(path)
        return
    message = can.Message
    with open(path, encoding=locale.getpreferredencoding(False)) as file:
        for line in file:
            parts = line.split()
            if len(parts) == 3:
                stamp, channel, frame = parts
                ident, _, data = frame.partition("#")
                if data[:1] not in ("#", "r", "R"):
                    try:
                        can_id = int(ident, 16)
                        payload = bytearray.fromhex(data)
                        timestamp = float(stamp[1:-1])
                    except ValueError:
                        can_id = _CAN_ERR_FLAG  # not ours to judge: python-can's reader says
                    if not can_id & _CAN_ERR_FLAG:
                        yield message(timestamp=timestamp, arbitration_id=can_id,
                                      is_extended_id=len(ident) > 3, dlc=len(payload),
                                      data=payload, is_rx=True,
                                      channel=int(channel) if channel.isdigit() else channel)
                        continue
            yield from can.io.CanutilsLogReader(io.StringIO(line))


class ReplayBus(BusHandle):
    """A bus whose received frames come from a capture; sends are counted and recorded."""

    def __init__(self, name: str, config: dict[str, Any], clock: Clock, *, dry_run: bool = False):
        super().__init__(name, config, clock, dry_run=dry_run)
        self.path: str = config["path"]
        self.speed = config.get("speed", 1.0)
        self.loop: bool = bool(config.get("loop"))
        self.finished = False
        self.error: str | None = None
        """Why the capture could not be read to its end (CaptureError), if it could not."""

    @property
    def full_speed(self) -> bool:
        return self.speed == "max"

    def open(self) -> None:
        self._open_recorder()
        self.state = "ok"

    def timeline(self) -> Iterator[can.Message]:
        """Every frame of the capture in order; when looping, pass after pass with timestamps
        moved on so time only increases. Streamed: a day-long capture is never all in memory.
        CaptureError says, naming the file, why the capture cannot be read."""
        offset = 0.0
        while True:
            first = last = None
            for msg in _checked(self.path):
                if first is None:
                    first = msg.timestamp
                last = msg.timestamp
                msg.timestamp += offset
                msg.is_rx = True
                yield msg
            if first is None or last is None or not self.loop:
                return
            offset += last - first + LOOP_GAP_SECS

    def _transmit(self, msg: can.Message) -> bool:
        return True  # nothing is listening on a capture: the frame is counted and recorded

    def start_reader(self, deliver: Callable[[BusHandle, can.Message | None], None]) -> None:
        if self.full_speed:
            return  # the engine pulls from timeline() itself
        self._thread = threading.Thread(target=self._pace, args=(deliver,),
                                        name=f"replay-{self.name}", daemon=True)
        self._thread.start()

    def _pace(self, deliver: Callable[[BusHandle, can.Message | None], None]) -> None:
        try:
            self._play(deliver)
        except CaptureError as exc:
            self.error = str(exc)
            self.finished = True
            deliver(self, END_OF_REPLAY)

    def _play(self, deliver: Callable[[BusHandle, can.Message | None], None]) -> None:
        started = time.monotonic()
        first: float | None = None
        speed = float(self.speed)
        for msg in self.timeline():
            if first is None:
                first = msg.timestamp
            delay = started + (msg.timestamp - first) / speed - time.monotonic()
            if 0 < delay < SHORT_WAIT_SECS:
                time.sleep(delay)  # within a burst of frames: a plain sleep costs far less
            elif delay > 0 and self._stop.wait(delay):
                return
            if self._stop.is_set():
                return
            self.frames_in += 1
            deliver(self, msg)
        self.finished = True
        deliver(self, END_OF_REPLAY)

    def status(self) -> dict[str, Any]:
        return {**super().status(), "finished": self.finished}
