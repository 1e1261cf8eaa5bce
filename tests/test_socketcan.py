"""The bridge on real SocketCAN: the kernel's vcan links instead of python-can's `virtual`
interface, so the socketcan driver, its errors and `ip`'s output are the real ones; and two
CAN controllers wired to each other (CABLE), for a real controller driver and what `ip` says
of a real controller in each mode.

Making vcan links needs root and a kernel with CAN. Where this machine has neither, these
tests are skipped, and `scripts/socketcan-vm.sh` runs them in a small virtual machine
(the test command does that by itself).

What the kernel does, as these tests rely on it (Linux 6.1): a link set down makes every
socket bound to it fail its next receive with ENETDOWN, once, and every send while it is
down; the same socket works again once the link is up. A link deleted (a USB adapter
unplugged) fails the next receive with ENODEV and every later send with ENXIO, even after a
link of the same name is back: only a new socket works.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import can
import conftest
import pytest
from conftest import LYNK_TO_PYLONTECH, SAMPLE
from test_pylontech import NORMAL_BURST, hexes

from canbridge import Clock
from canbridge import buses as buses_module
from canbridge.buses import BusHandle
from canbridge.config import load_pipeline
from canbridge.doctor import check_link, doctor, run_command
from canbridge.engine import Engine
from canbridge.registry import load_registry


def _why_not() -> str | None:
    try:
        socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW).close()
    except (AttributeError, OSError):
        return "this kernel has no SocketCAN"
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "making vcan links needs root and iproute2"
    return None


WHY_NOT = _why_not()
pytestmark = [pytest.mark.socketcan,
              pytest.mark.skipif(WHY_NOT is not None,
                                 reason=f"{WHY_NOT}; scripts/socketcan-vm.sh runs these in a VM")]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def vcan() -> Iterator[Callable[[], str]]:
    """Makes vcan links, up, with names no other test uses; deletes them afterwards."""
    made: list[str] = []

    def make() -> str:
        name = f"cb{uuid.uuid4().hex[:8]}"
        try:
            ip("link", "add", "dev", name, "type", "vcan")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"no vcan links here: {exc.stderr.strip()}")
        made.append(name)
        ip("link", "set", name, "up")
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


CABLE = os.environ.get("CANBRIDGE_TEST_CAN_CABLE", "").split()
"""Two real CAN controllers wired to each other, "NEAR FAR": the two ports of a two-port HAT
joined by a cable, or QEMU's emulated SJA1000 cards on one emulated bus (socketcan-vm.sh
sets it). QEMU's bus delivers every frame to the other card whatever the bit rates, and
models no acknowledgement or error: what is real is the kernel's driver and `ip`. The tests
set both links' bit rate and modes, and leave them down: never name links a bridge uses."""


def set_link(name: str, *settings: str) -> None:
    """A real controller, set as `ip link set NAME up type can SETTINGS` would (down first:
    a bit rate can only be set while the link is down)."""
    ip("link", "set", name, "down")
    ip("link", "set", name, "up", "type", "can", *settings)


@pytest.fixture
def cable() -> Iterator[tuple[str, str]]:
    """The two wired controllers at 500 kbit/s, up; every mode off and down afterwards."""
    if len(CABLE) != 2:
        pytest.skip("no two wired CAN controllers (CANBRIDGE_TEST_CAN_CABLE=\"NEAR FAR\")")
    for name in CABLE:
        set_link(name, "bitrate", "500000", "restart-ms", "100")
    yield CABLE[0], CABLE[1]
    for name in CABLE:
        set_link(name, "listen-only", "off", "berr-reporting", "off")
        ip("link", "set", name, "down")


def peer(channel: str) -> can.BusABC:
    """The other node on a link: the battery's gateway, or the inverter."""
    return can.Bus(interface="socketcan", channel=channel)


def first_second_of_the_sample() -> list[can.Message]:
    """The LYNK II sample capture's first second: one complete data set and alarm report."""
    frames = []
    for msg in can.LogReader(str(SAMPLE)):
        if frames and msg.timestamp >= frames[0].timestamp + 1.0:
            return frames
        frames.append(msg)
    raise AssertionError("the sample is shorter than a second")


def frames_until(bus: can.BusABC, done: Callable[[list[can.Message]], bool],
                 timeout: float) -> list[can.Message]:
    frames: list[can.Message] = []
    deadline = time.monotonic() + timeout
    while not done(frames):
        assert time.monotonic() < deadline, f"timed out; received {frames}"
        msg = bus.recv(timeout=0.1)
        if msg is not None:
            frames.append(msg)
    return frames


wait_until = functools.partial(conftest.wait_until, timeout=10.0)


def bridge_pipeline(folder: Path, battery: str, inverter: str) -> Path:
    path = folder / "pipeline.toml"
    path.write_text(f"""
[buses.battery]
interface = "socketcan"
channel = "{battery}"
bitrate = 250000

[buses.inverter]
interface = "socketcan"
channel = "{inverter}"
bitrate = 500000

{LYNK_TO_PYLONTECH}
[forwards.keepalive]
from_bus = "inverter"
to_bus = "battery"
ids = [0x305]
""")
    return path


@pytest.mark.parametrize("inverter_link", ["vcan", "controller"])
def test_the_bridge_on_socketcan_sends_the_golden_burst_and_forwards_the_keepalive(
        tmp_path: Path, vcan: Callable[[], str], request: pytest.FixtureRequest,
        inverter_link: str) -> None:
    battery = vcan()
    if inverter_link == "vcan":
        inverter = far = vcan()
    else:  # the bridge's inverter port wired to the inverter's
        inverter, far = request.getfixturevalue("cable")
    engine = Engine(load_pipeline(bridge_pipeline(tmp_path, battery, inverter),
                                  load_registry()), duration=60.0)
    runner = threading.Thread(target=engine.run)
    with peer(battery) as gateway, peer(far) as inverter_side:
        runner.start()
        try:
            wait_until(lambda: all(bus.state == "ok" for bus in engine.buses.values()))
            for msg in first_second_of_the_sample():
                gateway.send(msg)
            delivered = time.time()
            keepalive = can.Message(arbitration_id=0x305, data=bytes.fromhex("2100000000000000"),
                                    is_extended_id=False)
            inverter_side.send(keepalive)
            forwarded = frames_until(gateway, lambda got: bool(got), timeout=10)
            # A burst that starts well after the data set went out is computed from all of it.
            later = frames_until(
                inverter_side,
                lambda got: len([m for m in got if m.timestamp > delivered + 0.2]) >= 6,
                timeout=10)
        finally:
            engine.request_stop()
            runner.join(10)
    burst = {m.arbitration_id: bytes(m.data) for m in later if m.timestamp > delivered + 0.2}
    assert hexes(burst) == NORMAL_BURST
    assert [(m.arbitration_id, bytes(m.data).hex()) for m in forwarded] == [
        (0x305, "2100000000000000")]
    assert not runner.is_alive()
    assert engine.buses["battery"].status()["frames_in"] == 15


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buses_module, "BACKOFF_FIRST", 0.05)
    monkeypatch.setattr(buses_module, "BACKOFF_MAX", 0.2)
    monkeypatch.setattr(buses_module, "RECV_TIMEOUT", 0.05)


def opened(channel: str) -> tuple[BusHandle, list[can.Message]]:
    received: list[can.Message] = []
    handle = BusHandle("inverter", {"interface": "socketcan", "channel": channel}, Clock())
    handle.open()
    handle.start_reader(lambda _bus, msg: received.append(msg))
    return handle, received


FRAME = can.Message(arbitration_id=0x351, data=bytes.fromhex("2F02040B040BB001"),
                    is_extended_id=False)


def sends_until_one_goes_out(handle: BusHandle, timeout: float = 10.0) -> int:
    """Send FRAME every 20 ms, as bursts would, until one goes out; the failures before it."""
    failed = 0
    deadline = time.monotonic() + timeout
    while not handle.send(FRAME.__copy__()):
        failed += 1
        assert time.monotonic() < deadline, f"never went out: {handle.status()}"
        time.sleep(0.02)
    return failed


def test_a_link_set_down_and_up_again_carries_traffic_again(
        vcan: Callable[[], str], fast_backoff: None, caplog: pytest.LogCaptureFixture) -> None:
    channel = vcan()
    handle, received = opened(channel)
    with caplog.at_level(logging.WARNING, "canbridge.bus"):
        try:
            assert handle.send(FRAME.__copy__())
            ip("link", "set", channel, "down")
            for _ in range(10):
                assert handle.send(FRAME.__copy__()) is False  # counted, never raised
            ip("link", "set", channel, "up")
            sends_until_one_goes_out(handle)
            with peer(channel) as other:  # opened now: the link's going down spares it
                assert handle.send(FRAME.__copy__())
                [heard] = frames_until(other, lambda got: bool(got), timeout=5)
                other.send(can.Message(arbitration_id=0x305, data=bytes(8),
                                       is_extended_id=False))
                wait_until(lambda: bool(received))
        finally:
            handle.close()
    assert bytes(heard.data) == bytes(FRAME.data)
    assert [m.arbitration_id for m in received] == [0x305]
    status = handle.status()
    assert status["send_errors"] >= 10
    assert "Network is down" in status["last_error"]
    assert "bus inverter: working again" in caplog.messages


def test_a_silent_bus_recovers_from_every_link_flap(vcan: Callable[[], str],
                                                    fast_backoff: None) -> None:
    """A link that goes down leaves one error on the socket, for the next receive or send.
    python-can waits for the socket to be readable, then reads: a send that took the error
    in between left a blocking read waiting for a frame. On a bus where the other side
    sends nothing (an inverter without keepalive) it waited for ever, and the bus was never
    reopened. Sends right after each flap, as bursts would be, make that race likely."""
    channel = vcan()
    handle, _ = opened(channel)
    try:
        for _ in range(30):
            ip("link", "set", channel, "down")
            for _ in range(10):
                handle.send(FRAME.__copy__())
            ip("link", "set", channel, "up")
            sends_until_one_goes_out(handle, timeout=5.0)
    finally:
        handle.close()


def test_the_running_bridge_talks_again_after_each_flap_of_a_silent_inverter_link(
        tmp_path: Path, vcan: Callable[[], str], fast_backoff: None) -> None:
    """The whole bridge on a link where the inverter sends nothing: the bursts come back
    after every flap."""
    inverter = vcan()
    path = tmp_path / "pipeline.toml"
    path.write_text(f"""
[buses.battery]
interface = "replay"
path = "{SAMPLE}"
loop = true

[buses.inverter]
interface = "socketcan"
channel = "{inverter}"
{LYNK_TO_PYLONTECH}period_secs = 0.2
""")
    engine = Engine(load_pipeline(path, load_registry()), duration=120.0)
    runner = threading.Thread(target=engine.run)
    runner.start()
    try:
        for _ in range(10):
            ip("link", "set", inverter, "down")
            time.sleep(0.3)
            ip("link", "set", inverter, "up")
            with peer(inverter) as other:
                frames_until(other, lambda got: any(m.arbitration_id == 0x351 for m in got),
                             timeout=10)
    finally:
        engine.request_stop()
        runner.join(10)
    assert not runner.is_alive()
    assert engine.buses["inverter"].reopens >= 1


def test_an_unplugged_adapter_is_reopened_when_it_comes_back(
        vcan: Callable[[], str], fast_backoff: None) -> None:
    channel = vcan()
    handle, received = opened(channel)
    try:
        ip("link", "del", channel)
        wait_until(lambda: handle.state == "reopening" and handle.reopens == 0)
        assert handle.send(FRAME.__copy__()) is False
        time.sleep(0.5)  # several reopen attempts fail meanwhile
        assert "No such device" in handle.status()["last_error"]
        ip("link", "add", "dev", channel, "type", "vcan")
        ip("link", "set", channel, "up")
        # The old socket would fail with ENXIO for ever: only the reopened one works.
        sends_until_one_goes_out(handle)
        with peer(channel) as other:
            handle.send(FRAME.__copy__())
            [heard] = frames_until(other, lambda got: bool(got), timeout=5)
            other.send(can.Message(arbitration_id=0x305, data=bytes(8), is_extended_id=False))
            wait_until(lambda: bool(received))
    finally:
        handle.close()
    assert bytes(heard.data) == bytes(FRAME.data)
    assert [m.arbitration_id for m in received] == [0x305]
    assert handle.reopens >= 1


def test_doctor_reads_a_real_link_and_hears_the_battery(tmp_path: Path,
                                                        vcan: Callable[[], str]) -> None:
    battery, inverter = vcan(), vcan()
    config = load_pipeline(bridge_pipeline(tmp_path, battery, inverter), load_registry())
    stop = threading.Event()

    def gateway() -> None:
        with peer(battery) as bus:
            while not stop.is_set():
                for msg in first_second_of_the_sample():
                    bus.send(msg)
                stop.wait(0.2)

    talker = threading.Thread(target=gateway)
    talker.start()
    out = io.StringIO()
    try:
        code = doctor(config, out, listen_secs=2.0)
    finally:
        stop.set()
        talker.join()
    report = out.getvalue()
    lines = report.splitlines()
    assert f"warn  bus battery ({battery}): virtual CAN link, up" in lines, report
    assert f"warn  bus inverter ({inverter}): virtual CAN link, up" in lines
    assert ("  ok  bus battery hears the battery (0x300, 0x305, 0x351, 0x354, 0x355, 0x356, "
            "0x35A, 0x35E)") in lines
    assert ("  ok  inverter sink inverter would send: SOC 72 %, 53.5 V, 0.4 A, CVL 55.9 V, "
            "CCL 282 A, DCL 282 A, DVL 43.2 V, charge on, discharge on (normal)") in lines
    assert code == 0  # warnings only


@pytest.mark.parametrize(("settings", "mark", "facts", "next_step"), [
    ((), "ok", "up, 500000 bit/s, ERROR-ACTIVE, errors tx 0 rx 0, restart-ms 100", ""),
    # iproute2 prints a mode between "can" and "state": its text once hid the state here.
    (("berr-reporting", "on"), "ok", "ERROR-ACTIVE, errors tx 0 rx 0, restart-ms 100, "
     "berr-reporting on", ""),
    (("listen-only", "on"), "FAIL", "restart-ms 100, listen-only on", "sends nothing"),
    (("bitrate", "250000"), "FAIL", "up, 250000 bit/s", "the pipeline says 500000 bit/s"),
])
def test_doctor_reads_a_real_controller_in_each_mode(
        cable: tuple[str, str], settings: tuple[str, ...], mark: str, facts: str,
        next_step: str) -> None:
    near, _far = cable
    if settings:
        set_link(near, *settings)
    check = check_link("inverter", {"interface": "socketcan", "channel": near,
                                    "bitrate": 500000}, run_command)
    assert check.mark == mark, check
    assert check.what.startswith(f"bus inverter ({near}): ") and facts in check.what, check
    assert next_step in check.next_step, check


def test_doctor_says_a_real_controller_is_down(cable: tuple[str, str]) -> None:
    near, _far = cable
    ip("link", "set", near, "down")
    check = check_link("inverter", {"interface": "socketcan", "channel": near}, run_command)
    assert (check.mark, check.what) == ("FAIL", f"bus inverter ({near}): down")


def test_the_link_unit_brings_a_real_controller_up_as_doctor_wants(
        cable: tuple[str, str]) -> None:
    """canbridge-can@.service's commands, as systemd runs them for the link (%i) with the bit
    rate of its /etc/canbridge/LINK.env, on a real controller (vcan takes no bit rate)."""
    near, _far = cable
    ip("link", "set", near, "down")
    unit = (Path(__file__).parent.parent / "systemd" / "canbridge-can@.service").read_text()
    for key in ("ExecStartPre=", "ExecStart="):
        line = next(line for line in unit.splitlines() if line.startswith(key))
        subprocess.run(line.removeprefix(key).replace("%i", near)
                       .replace("${BITRATE}", "250000").split(), check=True)
    check = check_link("battery", {"interface": "socketcan", "channel": near,
                                   "bitrate": 250000}, run_command)
    assert (check.mark, check.what) == ("ok", f"bus battery ({near}): up, 250000 bit/s, "
                                              "ERROR-ACTIVE, errors tx 0 rx 0, restart-ms 100")
