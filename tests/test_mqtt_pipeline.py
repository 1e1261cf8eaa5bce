"""The mqtt sink inside a real `canbridge run`: a looping real-time replay of the LYNK II
capture -> discover-lynk2 -> pylontech (virtual inverter bus, recorded) and mqtt."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import can
import pytest
from broker import Mosquitto, Subscriber, mosquitto_fixture
from conftest import SAMPLE

CANBRIDGE = Path(sys.executable).with_name("canbridge")
STATE = "canbridge/battery/state"
STATUS = "canbridge/battery/status"
VOLTAGE_CONFIG = "homeassistant/sensor/battery/voltage/config"
PERIOD = 1.0

broker = mosquitto_fixture()
late_broker = mosquitto_fixture(start=False)


class Run:
    """`canbridge run` in a child process; its log goes to a file the test can wait on."""

    def __init__(self, folder: Path, server: Mosquitto, *, controls: bool = False):
        self.folder = folder
        first = "control" if controls else "lynk"
        extra = '\n[transforms.control]\ntype = "controls"\ninputs = ["lynk"]\n' if controls \
            else ""
        self.log_file = folder / "canbridge.log"
        self.record = folder / "inverter.log"
        pipeline = folder / "pipeline.toml"
        pipeline.write_text(f"""
[status]
file = "status.json"

[buses.battery]
interface = "replay"
path = "{SAMPLE}"
speed = 1.0
loop = true

[buses.inverter]
interface = "virtual"
channel = "mqtt-e2e-{uuid.uuid4()}"
record = "inverter.log"

[sources.lynk]
type = "discover-lynk2"
bus = "battery"

[sinks.inverter]
type = "pylontech"
inputs = ["{first}"]
bus = "inverter"
period_secs = {PERIOD}

[sinks.mqtt]
type = "mqtt"
inputs = ["{first}"]
host = "{server.host}"
port = {server.port}
publish_every_secs = 1
control = {str(controls).lower()}
{extra}""")
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen([str(CANBRIDGE), "run", str(pipeline)], cwd=folder,
                                            stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged; log:\n{self.log()}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
        return self.process.wait(timeout=10)

    def bursts(self) -> list[tuple[float, str]]:
        """(pipeline time, data) of the 0x351 frames sent to the inverter."""
        pattern = re.compile(r"^\((\d+\.\d+)\) \S+ 351#([0-9A-F]+)")
        return [(float(m.group(1)), m.group(2)) for line in self.record.read_text().splitlines()
                if (m := pattern.match(line))]

    def burst_times(self) -> list[float]:
        """Pipeline times of the 0x351 frames sent to the inverter (one per burst)."""
        pattern = re.compile(r"^\((\d+\.\d+)\) \S+ 351#")
        return [float(m.group(1)) for line in self.record.read_text().splitlines()
                if (m := pattern.match(line))]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[list[Run]]:
    runs: list[Run] = []
    yield runs
    for process in runs:
        process.stop(signal.SIGKILL)


def test_inverter_cadence_unaffected_by_broker_down_at_start_and_restarted(
        late_broker, run, tmp_path):
    pipeline = Run(tmp_path, late_broker)
    run.append(pipeline)
    pipeline.wait_for_log("cannot reach MQTT broker")
    pipeline.wait_for_log("battery data complete: sending Pylontech frames")

    late_broker.start()
    with Subscriber(late_broker) as sub:
        assert sub.wait(STATUS).payload == b"online"
        sub.wait(VOLTAGE_CONFIG)
        assert sub.wait(STATE).json()["soc"] == 72

    restarted = time.monotonic()
    late_broker.restart()
    with Subscriber(late_broker) as sub:
        assert sub.wait(STATUS).payload == b"online"
        sub.wait(VOLTAGE_CONFIG)
        sub.wait(STATE)  # the latest state, sent again on reconnection
        state = sub.wait(STATE, lambda m: m.json()["health"]["mqtt"]["state"] == "connected")
        assert time.monotonic() - restarted < 5.0
        assert state.json()["health"]["inverter"]["safety"] == "normal"

        mark = sub.mark()
        assert pipeline.stop(signal.SIGTERM) == 0
        assert sub.wait(STATUS, after=mark).payload == b"offline"  # clean stop, no last will

    log = pipeline.log()
    assert log.count("lost connection to MQTT broker") == 1
    assert log.count(f"connected to MQTT broker 127.0.0.1:{late_broker.port}") == 2
    bursts = pipeline.burst_times()
    gaps = [later - earlier for earlier, later in itertools.pairwise(bursts)]
    assert len(bursts) >= 3, log
    assert all(abs(gap - PERIOD) < 0.1 for gap in gaps), gaps


def test_last_will_says_offline_when_the_process_is_killed(broker, run, tmp_path):
    with Subscriber(broker) as sub:
        pipeline = Run(tmp_path, broker)
        run.append(pipeline)
        assert sub.wait(STATUS).payload == b"online"
        state = sub.wait(STATE).json()
        assert (state["soc"], state["voltage"], state["manufacturer"]) == (72, 53.5, "DISCOVER")
        assert state["health"]["lynk"]["type"] == "discover-lynk2"

        mark = sub.mark()
        assert pipeline.stop(signal.SIGKILL) == -signal.SIGKILL
        offline = sub.wait(STATUS, after=mark, timeout=3)
    assert offline.payload == b"offline"
    with Subscriber(broker) as later:
        assert (later.wait(STATUS).payload, later.wait(STATUS).retain) == (b"offline", True)


def test_a_command_from_home_assistant_reaches_the_inverter_within_one_period(
        broker, run, tmp_path):
    pipeline = Run(tmp_path, broker, controls=True)
    run.append(pipeline)
    pipeline.wait_for_log("battery data complete: sending Pylontech frames")
    deadline = time.monotonic() + 5
    while not any(data[4:8] == "040B" for _, data in pipeline.bursts()):
        assert time.monotonic() < deadline, pipeline.log()  # past the first, no-report burst
        time.sleep(0.05)
    with Subscriber(broker) as sub:
        sub.wait("homeassistant/number/battery/charge_current_max/config")
        assert sub.wait("canbridge/battery/control/charge_current_max").payload == b"3276.7"
        mark = sub.mark()
        sent_at = time.time()
        sub.publish("canbridge/battery/set/charge_current_max", "50")
        assert sub.wait("canbridge/battery/control/charge_current_max",
                        after=mark).payload == b"50"
        pipeline.wait_for_log("control charge_current_max set to 50 A until changed")
        deadline = time.monotonic() + 5
        while not any(data[4:8] == "F401" for _, data in pipeline.bursts()):
            assert time.monotonic() < deadline, pipeline.log()
            time.sleep(0.05)
    assert pipeline.stop(signal.SIGTERM) == 0
    bursts = pipeline.bursts()
    before = [data for at, data in bursts if at < sent_at]
    if before[0] == "2F0200000000B001":  # a first burst before the first alarm report
        before = before[1:]
    changed = [at for at, data in bursts if data[4:8] == "F401"]  # CCL 50.0 A
    assert before and all(data[4:8] == "040B" for data in before)  # 282 A until then
    assert changed[0] - sent_at <= PERIOD + 0.5
    assert all(data[4:8] == "F401" for at, data in bursts if at >= changed[0])


def test_a_full_speed_replay_sends_every_alarm_change_and_the_last_state(broker, tmp_path):
    """At speed "max" the periodic state goes out at most every publish_every_secs of real
    time, as from a live bridge: ten minutes of capture are not ten minutes of states in a
    second. Every alarm change and the final state still go out, in order."""
    import math
    import struct

    capture_path = tmp_path / "alarms.log"
    writer = can.io.CanutilsLogWriter(str(capture_path), channel="can0")
    t0 = 1_700_000_000.0
    steady, high = bytes.fromhex("ABAAFEAFAAFAFF"), bytes.fromhex("A7AAFEAFAAFAFF")
    alarm_seconds = set(range(100, 110)) | set(range(300, 320)) | set(range(500, 505))
    for second in range(600):
        for k, (frame_id, data) in enumerate((
                (0x351, struct.pack("<HHHH", 559, 2820, 2820, 432)),
                (0x355, struct.pack("<HH4x", 72, 100)),
                (0x356, struct.pack("<Hhh2x", 535, second % 50, 280)),
                (0x35A, high if second in alarm_seconds else steady))):
            writer.on_message_received(can.Message(timestamp=t0 + second + k * 0.001,
                                                   arbitration_id=frame_id, data=data,
                                                   is_extended_id=False))
    writer.stop()
    path = tmp_path / "p.toml"
    path.write_text(f"""
[status]
file = "{tmp_path / 'status.json'}"
[buses.battery]
interface = "replay"
path = "{capture_path}"
speed = "max"
[sources.lynk]
type = "discover-lynk2"
bus = "battery"
[sinks.mqtt]
type = "mqtt"
inputs = ["lynk"]
host = "{broker.host}"
port = {broker.port}
publish_every_secs = 1
""")
    with Subscriber(broker) as sub:
        started = time.monotonic()
        done = subprocess.run([str(CANBRIDGE), "run", str(path)], capture_output=True,
                              text=True, timeout=60, check=False)
        elapsed = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        last = sub.wait(STATE, lambda m: m.json().get("current") == 4.9, timeout=10)
        states = [m.json() for m in sub.received(STATE)]
    flags = [s.get("alarm_high_voltage") for s in states if "alarm_high_voltage" in s]
    changes = [flag for flag, before in zip(flags[1:], flags, strict=False) if flag != before]
    assert changes == [True, False, True, False, True, False]  # every change, in order
    assert states[-1] == last.json() and last.json()["alarm_high_voltage"] is False
    # the six alarm changes, the final state, and one periodic state a second of the run
    assert len(states) <= 6 + 1 + math.ceil(elapsed)
    status = json.loads((tmp_path / "status.json").read_text())["components"]["mqtt"]
    assert status["states_skipped"] >= 600 - 1 - math.ceil(elapsed)
