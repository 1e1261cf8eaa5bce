"""Files written off the engine thread: the latest text for a path, atomically, in order.
The status file goes the same way (`submit`).

A component asks `write_soon(path, text)`; one background thread writes it (temp file in the
same folder, fsync, rename, fsync of the folder), so a slow or stalled SD card never delays
the CAN path. Writes to one path keep their order and a newer text replaces one not yet
written. `flush()` waits for everything queued (the engine calls it at stop).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Hashable
from pathlib import Path

log = logging.getLogger("canbridge.writer")

ErrorHandler = Callable[[OSError], None]


def write_atomic(path: Path, text: str, mode: int = 0o640) -> None:
    """Write `text` to `path` so a reader (or a power cut) sees the old or the new file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class BackgroundWriter:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: dict[Hashable, tuple[Callable[[], None], ErrorHandler | None]] = {}
        self._busy = False
        self._thread: threading.Thread | None = None

    def write_soon(self, path: Path, text: str, on_error: ErrorHandler | None = None) -> None:
        """Write `text` to `path` atomically and durably, soon."""
        self.submit(path, lambda: write_atomic(path, text), on_error)

    def submit(self, key: Hashable, job: Callable[[], None],
               on_error: ErrorHandler | None = None) -> None:
        """Run `job` on the writer thread; a job of the same `key` not started yet is
        replaced (the newest state wins), and jobs run in the order of their latest ask."""
        with self._cond:
            self._pending.pop(key, None)  # re-queued at the end: order of the latest asks
            self._pending[key] = (job, on_error)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="canbridge-writer",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued is written; False when `timeout` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
                key = next(iter(self._pending))
                job, on_error = self._pending.pop(key)
                self._busy = True
            try:
                job()
            except OSError as exc:
                if on_error is not None:
                    on_error(exc)
                else:
                    log.error("cannot write %s: %s", key, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


WRITER = BackgroundWriter()
"""The process's writer: one thread for every component's state files."""
write_soon = WRITER.write_soon
submit = WRITER.submit
flush = WRITER.flush
