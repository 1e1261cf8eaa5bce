"""A bus's record file (`record = PATH`): every frame in and out, in candump -L form, written
by the file's own thread.

The engine thread only hands each frame over, as a copy. Opening, writing and flushing
happen on the record thread, so a stalled SD card (a write held up behind other writers'
dirty pages), a full disk or a path that blocks on open (a FIFO nobody reads) never delays
a frame to the inverter, at start-up or later.
"""

from __future__ import annotations

import logging
import queue
import threading

import can

log = logging.getLogger("canbridge.bus")

_FLUSH = object()
_CLOSE = object()


class RecordFile:
    def __init__(self, path: str, channel: str, bus_name: str):
        self.path = path
        self.channel = channel
        self.bus_name = bus_name
        self.errors = 0
        self._failing = False
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"record-{bus_name}",
                                        daemon=True)
        self._thread.start()

    def write(self, msg: can.Message, timestamp: float) -> None:
        """Record `msg` as it is now, stamped `timestamp` (the caller keeps using `msg`)."""
        copy = msg.__copy__()
        copy.timestamp = timestamp
        self._queue.put(copy)

    def flush(self) -> None:
        """Hand what was written so far to the kernel, soon."""
        self._queue.put(_FLUSH)

    def close(self, timeout: float | None) -> bool:
        """Write what waits and close the file; False if that did not end within `timeout`
        (None: no limit; else the thread, a daemon, gives up at the process's end)."""
        self._queue.put(_CLOSE)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("bus %s: the record file %s is still being written at stop (a stalled "
                      "disk?)", self.bus_name, self.path)
            return False
        return True

    def _run(self) -> None:
        try:
            writer: can.io.CanutilsLogWriter | None = can.io.CanutilsLogWriter(
                self.path, channel=self.channel)
        except OSError as exc:
            writer = None
            self._failed(exc)
        while (item := self._queue.get()) is not _CLOSE:
            if writer is None:
                continue  # could not be opened: frames are not recorded this run
            try:
                if item is _FLUSH:
                    writer.file.flush()
                    self._works()
                else:
                    writer.on_message_received(item)
            except OSError as exc:
                self._failed(exc)
        if writer is not None:
            try:
                writer.stop()
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        """A full disk must not stop the bridge: count it, say it once per episode."""
        self.errors += 1
        if not self._failing:
            self._failing = True
            log.error("bus %s: cannot write the record file %s: %s", self.bus_name, self.path,
                      exc.strerror or exc)

    def _works(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("bus %s: writing the record file works again", self.bus_name)
