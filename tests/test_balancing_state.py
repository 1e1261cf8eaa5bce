"""The balancing state file is never left half-written: writes killed or failing at any point
leave the old file or the new one, and the rename is made durable."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from canbridge_plugins.balancing import CellBalancing
from canbridge_plugins.balancing.state import SavedState, dumps, read_state, write_state

from canbridge import Clock
from canbridge.testing import build

T0 = 1745512155.0
OLD = SavedState(last_end=T0, hold_started=T0)

WRITER = """
import sys
from pathlib import Path
from canbridge_plugins.balancing.state import SavedState, write_state

path, t0 = Path(sys.argv[1]), float(sys.argv[2])
print("writing", flush=True)
n = 0
while True:
    n += 1
    write_state(path, SavedState(last_end=t0 + n, hold_started=t0 + 2 * n))
"""


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "balancing.toml")


@pytest.mark.parametrize("failing", ["fsync", "replace", "write"])
def test_a_failing_write_leaves_the_old_file_and_no_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    path = tmp_path / "balancing.toml"
    write_state(path, OLD)
    before = path.read_bytes()

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")
    if failing == "write":
        # fails after part of the data reached the temp file
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, file):
                self.file = file

            def __enter__(self):
                return self

            def __exit__(self, *exc: object) -> None:
                self.file.close()

            def write(self, data: bytes) -> None:
                self.file.write(data[: len(data) // 2])
                self.file.flush()
                fail()
        monkeypatch.setattr(os, "fdopen",
                            lambda fd, mode, **kw: HalfWriter(real_fdopen(fd, mode, **kw)))
    else:
        monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match="Input/output error"):
        write_state(path, SavedState(last_end=T0 + 1))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert read_state(path) == OLD
    assert leftovers(tmp_path) == []


def test_data_is_synced_before_the_rename_and_the_folder_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "balancing.toml"
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else
                      f"fsync file of {os.fstat(fd).st_size} bytes")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        assert Path(src).parent == tmp_path and Path(src).name.startswith(".balancing.toml.")
        events.append(f"rename to {Path(dst).name}")
        real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_state(path, OLD)
    size = len(dumps(OLD).encode())
    assert events == [f"fsync file of {size} bytes", "rename to balancing.toml", "fsync folder"]


def test_a_writer_killed_at_random_points_leaves_old_or_new_never_a_mix(tmp_path: Path) -> None:
    """SIGKILL a process rewriting the file in a loop, at random moments, many times."""
    path = tmp_path / "balancing.toml"
    write_state(path, OLD)
    rng = random.Random(20250424)
    seen = set()
    for _ in range(12):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(T0)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline() == "writing\n"
        time.sleep(rng.uniform(0.0, 0.03))
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
        child.stdout.close()
        state = read_state(path)  # raises if torn
        assert state.last_end is not None and state.hold_started is not None
        n = state.last_end - T0
        assert state.hold_started == T0 + 2 * n, "fields from two different writes"
        assert path.read_text() == dumps(state)
        seen.add(n)
    assert len(seen) > 1, "the writer never got to replace the file"

    # temp files of killed writes are cleaned up at the next start
    assert all(name.startswith(".balancing.toml.") and name.endswith(".tmp")
               for name in leftovers(tmp_path))
    build(CellBalancing, {"inputs": ["lynk"], "state_file": str(path)},
          clock=Clock(virtual=True, start=T0))
    assert leftovers(tmp_path) == []
