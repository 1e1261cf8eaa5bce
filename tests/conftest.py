"""Shared test helpers: unique virtual CAN channels, capture files, running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import can
import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SAMPLE = REPO / "examples" / "captures" / "lynk2-sample.log"
"""Four minutes of a real LYNK II's traffic, as shipped with the examples."""

LYNK_TO_PYLONTECH = """\
[sources.lynk]
type = "discover-lynk2"
bus = "battery"
[sinks.inverter]
type = "pylontech"
inputs = ["lynk"]
bus = "inverter"
"""
"""The smallest bridge, for a pipeline file that declares the buses `battery` and
`inverter` before it."""


@pytest.fixture
def channel() -> str:
    """A python-can `virtual` channel name no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


def write_capture(path: Path, frames: Iterable[tuple[float, int, bytes]], *,
                  extended: bool = False) -> Path:
    """Write (timestamp, id, data) frames as a candump -L file."""
    writer = can.io.CanutilsLogWriter(str(path), channel="can0")
    for ts, frame_id, data in frames:
        writer.on_message_received(can.Message(timestamp=ts, arbitration_id=frame_id,
                                               is_extended_id=extended or frame_id > 0x7FF,
                                               data=data))
    writer.stop()
    return path


def wait_until(condition: Callable[[], bool], timeout: float = 5.0,
               every: float = 0.01) -> None:
    """Poll `condition` every `every` seconds until it holds; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a `canbridge` subprocess that also loads the test-only plugins."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env["CANBRIDGE_PLUGINS"] = "support_plugins"
    env.update(extra)
    return env


def canbridge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "canbridge", *args]


def run_canbridge(*args: str, cwd: Path | None = None, timeout: float = 60,
                  **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(canbridge_cmd(*args), cwd=cwd, env=subprocess_env(**env), text=True,
                          capture_output=True, timeout=timeout, check=False)


@pytest.fixture
def with_test_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load tests/support_plugins.py through $CANBRIDGE_PLUGINS in this process."""
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("CANBRIDGE_PLUGINS", "support_plugins")
