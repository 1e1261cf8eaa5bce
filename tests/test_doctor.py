"""`canbridge doctor` on fixtures: recorded `ip` outputs for each CAN state and mode, python-can
virtual buses playing LYNK II or inverter traffic, a real mosquitto. No hardware."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import can
import pytest
from broker import mosquitto_fixture
from conftest import LYNK_TO_PYLONTECH, SAMPLE

from canbridge.config import load_pipeline
from canbridge.doctor import FAIL, OK, WARN, check_link, check_mqtt, doctor, parse_link
from canbridge.registry import load_registry

broker = mosquitto_fixture()
secure_broker = mosquitto_fixture(users={"canbridge": "s3cret"})

IP = Path(__file__).parent / "data" / "ip"
"""What Linux 6.1's `ip -details -statistics -json link show` (iproute2 6.1) printed of a
real CAN controller (QEMU's emulated Kvaser PCI card: an SJA1000 and the kernel's kvaser_pci
driver, in scripts/socketcan-vm.sh's machine) down and up, of a vcan link, and of `lo`."""


def ip_link(name: str = "sja1000-up", xstats: dict[str, int] | None = None, **data: Any) -> str:
    """A recorded answer of `ip`, with fields of the link's `info_data` (and of its kernel
    counters, `info_xstats`) replaced."""
    link = json.loads((IP / f"{name}.json").read_text())
    link[0]["linkinfo"]["info_data"].update(data)
    link[0]["linkinfo"].setdefault("info_xstats", {}).update(xstats or {})
    return json.dumps(link)


IP_UP = ip_link()
IP_DOWN = ip_link("sja1000-down")
IP_BUS_OFF = ip_link(state="BUS-OFF", berr_counter={"tx": 248, "rx": 0})
IP_PASSIVE = ip_link(state="ERROR-PASSIVE", berr_counter={"tx": 136, "rx": 0})
IP_NO_RESTART = ip_link(restart_ms=0)
IP_WRONG_RATE = ip_link(bittiming={"bitrate": 500000, "sample_point": "0.875"})
IP_VCAN = (IP / "vcan-up.json").read_text()
IP_LOOPBACK = (IP / "loopback.json").read_text()
MISSING = 'Device "can0" does not exist.\n'
BUS = {"interface": "socketcan", "channel": "can0", "bitrate": 250000}


def runner(output: str, code: int = 0):
    return lambda command: (code, output)


def test_parse_link_reads_every_field() -> None:
    link = parse_link(IP_UP, 0)
    assert (link.exists, link.up, link.state, link.tx_errors, link.rx_errors, link.restart_ms,
            link.bitrate, link.modes, link.virtual) == (True, True, "ERROR-ACTIVE", 0, 0, 100,
                                                        250000, (), False)
    assert parse_link(IP_DOWN, 0).up is False
    assert parse_link(IP_VCAN, 0).virtual is True
    assert parse_link(MISSING, 1).exists is False
    modes = parse_link(ip_link(ctrlmode=["TRIPLE-SAMPLING", "BERR-REPORTING"]), 0).modes
    assert modes == ("TRIPLE-SAMPLING", "BERR-REPORTING")


@pytest.mark.parametrize(("output", "code", "mark", "what", "next_step"), [
    (IP_UP, 0, OK, "bus battery (can0): up, 250000 bit/s, ERROR-ACTIVE, errors tx 0 rx 0, "
     "restart-ms 100", ""),
    (MISSING, 1, FAIL, "bus battery (can0): no such interface", "is the CAN HAT's overlay"),
    (IP_DOWN, 0, FAIL, "bus battery (can0): down", "sudo systemctl restart canbridge-can@can0"),
    (IP_BUS_OFF, 0, FAIL, "BUS-OFF, errors tx 248", "bus-off: check CAN-H/CAN-L, the 120 ohm"),
    (IP_PASSIVE, 0, FAIL, "ERROR-PASSIVE, errors tx 136", "frames are not acknowledged"),
    (IP_NO_RESTART, 0, WARN, "restart-ms 0", "a bus-off will not recover by itself"),
    (IP_WRONG_RATE, 0, FAIL, "up, 500000 bit/s", "set BITRATE=250000 in /etc/canbridge/can0.env"),
    (IP_VCAN, 0, WARN, "bus battery (can0): virtual CAN link, up", "a vcan link reaches no wire"),
    (IP_LOOPBACK, 0, FAIL, "bus battery (can0): not a CAN interface (link/loopback)",
     "set the channel of bus battery in the pipeline"),
    # A controller mode set on the link (by hand, a tutorial, a .network file): one that keeps
    # frames off the wire fails, one that hides errors or drops frames warns, others pass.
    (ip_link(ctrlmode=["BERR-REPORTING"]), 0, OK, "restart-ms 100, berr-reporting on", ""),
    (ip_link(ctrlmode=["LISTEN-ONLY"]), 0, FAIL, "restart-ms 100, listen-only on",
     "sends nothing and acknowledges nothing; sudo ip link set can0 down && sudo ip link set "
     "can0 up type can listen-only off"),
    (ip_link(ctrlmode=["LOOPBACK"], restart_ms=0), 0, FAIL, "loopback on", "never reach the wire"),
    (ip_link(ctrlmode=["PRESUME-ACK"]), 0, WARN, "presume-ack on", "goes unnoticed"),
    (ip_link(ctrlmode=["ONE-SHOT", "BERR-REPORTING"]), 0, WARN, "one-shot berr-reporting on",
     "is not sent again; sudo ip link set can0 down && sudo ip link set can0 up type can "
     "one-shot off"),
    # Fine now, but the kernel counted bus-off episodes: a fault that comes and goes...
    (ip_link(xstats={"bus_off": 3, "restarts": 3, "error_passive": 7}), 0, WARN,
     "restart-ms 100; counted so far: 3 bus-off, 7 error-passive",
     "the link went bus-off before, though it is fine now"),
    # ... error-passive alone is a node that was off for a while: told, not warned.
    (ip_link(xstats={"error_passive": 2}), 0, OK,
     "restart-ms 100; counted so far: 0 bus-off, 2 error-passive", ""),
    (ip_link(xstats={"error_passive": 1}, ctrlmode=["LISTEN-ONLY"]), 0, FAIL,
     "listen-only on; counted so far: 0 bus-off, 1 error-passive", "sends nothing"),
    ("Option \"-json\" is unknown, try \"ip -help\".\n", 255, WARN,
     "bus battery (can0): cannot read what `ip` says of it (Option \"-json\" is unknown",
     "doctor reads `ip -json`"),
])
def test_each_can_state_gets_its_mark_and_next_step(output: str, code: int, mark: str,
                                                    what: str, next_step: str) -> None:
    check = check_link("battery", BUS, runner(output, code))
    assert check.mark == mark
    assert what in check.what
    assert next_step in check.next_step


def pipeline(folder: Path, battery: str, inverter: str) -> Path:
    path = folder / "p.toml"
    path.write_text(f"""
[status]
file = "{folder / 'status.json'}"
[buses.battery]
interface = "virtual"
channel = "{battery}"
[buses.inverter]
interface = "virtual"
channel = "{inverter}"
{LYNK_TO_PYLONTECH}
""")
    return path


class Play:
    """Plays the LYNK II sample on one channel and 0x305 on another, in a loop."""

    def __init__(self, lynk_channel: str, keepalive_channel: str):
        self.stop = threading.Event()
        self.frames = list(can.LogReader(str(SAMPLE)))
        self.thread = threading.Thread(target=self._run, args=(lynk_channel, keepalive_channel))
        self.thread.start()

    def _run(self, lynk_channel: str, keepalive_channel: str) -> None:
        with can.Bus(interface="virtual", channel=lynk_channel) as lynk, \
                can.Bus(interface="virtual", channel=keepalive_channel) as inverter:
            while not self.stop.is_set():
                for msg in self.frames:
                    if msg.arbitration_id in (0x305, 0x300):
                        continue
                    lynk.send(can.Message(arbitration_id=msg.arbitration_id, data=msg.data,
                                          is_extended_id=False))
                inverter.send(can.Message(arbitration_id=0x305, data=bytes(8),
                                          is_extended_id=False))
                self.stop.wait(0.5)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


NO_SYSTEMCTL = runner("systemctl: not found", 127)


def run_doctor(path: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = doctor(load_pipeline(path, load_registry()), out, listen_secs=2.5,
                  runner=NO_SYSTEMCTL)
    return code, out.getvalue()


def test_a_healthy_bridge_passes(tmp_path: Path) -> None:
    battery, inverter = f"dr-bat-{uuid.uuid4()}", f"dr-inv-{uuid.uuid4()}"
    play = Play(battery, inverter)
    try:
        code, text = run_doctor(pipeline(tmp_path, battery, inverter))
    finally:
        play.close()
    assert code == 0, text
    assert "  ok  bus battery hears the battery (0x351, 0x354, 0x355, 0x356" in text
    assert "  ok  bus inverter hears the inverter's 0x305 keepalive" in text
    assert ("  ok  inverter sink inverter would send: SOC 72 %, 53.5 V," in text)
    assert "CVL 55.9 V, CCL 282 A, DCL 282 A, DVL 43.2 V, charge on, discharge on" in text
    assert text.rstrip().endswith("every check passed")


def test_swapped_ports_are_named(tmp_path: Path) -> None:
    battery, inverter = f"dr-bat-{uuid.uuid4()}", f"dr-inv-{uuid.uuid4()}"
    play = Play(inverter, battery)  # the cables the wrong way round
    try:
        code, text = run_doctor(pipeline(tmp_path, battery, inverter))
    finally:
        play.close()
    assert code == 1
    assert "FAIL  bus battery hears 0x305, and bus inverter hears the battery" in text
    assert "-> the ports are swapped: swap the cables or the two buses' channels" in text
    assert "FAIL  bus inverter hears the battery" in text


def test_silent_buses_fail_with_what_to_look_at(tmp_path: Path) -> None:
    code, text = run_doctor(pipeline(tmp_path, f"dr-{uuid.uuid4()}", f"dr-{uuid.uuid4()}"))
    assert code == 1
    assert "FAIL  bus battery hears nothing, not the battery" in text
    assert "-> nothing at all: is the other side on, the cable in" in text
    assert "FAIL  inverter sink inverter: nothing to send yet (waiting for battery data)" in text
    assert text.rstrip().endswith("2 checks failed")


def mqtt_pipeline(tmp_path: Path, host: str, port: int, extra: str = "") -> Path:
    path = tmp_path / "m.toml"
    path.write_text(f'[buses.b]\ninterface = "virtual"\nchannel = "{uuid.uuid4()}"\n'
                    '[sources.lynk]\ntype = "discover-lynk2"\nbus = "b"\n'
                    f'[sinks.mqtt]\ntype = "mqtt"\ninputs = ["lynk"]\nhost = "{host}"\n'
                    f'port = {port}\n{extra}')
    return path


def test_the_broker_is_tried_for_real(broker, secure_broker, tmp_path: Path) -> None:
    registry = load_registry()
    [ok] = check_mqtt(load_pipeline(mqtt_pipeline(tmp_path, broker.host, broker.port),
                                    registry))
    assert (ok.mark, ok.what) == (OK, f"mqtt mqtt: broker {broker.host}:{broker.port} "
                                      "accepts canbridge")
    (tmp_path / "pw").write_text("wrong\n")
    [refused] = check_mqtt(load_pipeline(mqtt_pipeline(
        tmp_path, secure_broker.host, secure_broker.port,
        'username = "canbridge"\npassword_file = "pw"\n'), registry))
    assert refused.mark == FAIL and "refused" in refused.what
    assert "check username and password_file" in refused.next_step
    started = time.monotonic()
    [gone] = check_mqtt(load_pipeline(mqtt_pipeline(tmp_path, "127.0.0.1", 1), registry))
    assert gone.mark == FAIL and "unreachable" in gone.what
    assert time.monotonic() - started < 6


def test_doctor_on_the_command_line_exits_2_for_a_bad_file(tmp_path: Path) -> None:
    from conftest import run_canbridge

    (tmp_path / "bad.toml").write_text("[buses.x]\ninterface = 5\n")
    result = run_canbridge("doctor", str(tmp_path / "bad.toml"))
    assert result.returncode == 2
    assert "buses.x.interface: expected a string, got an integer" in result.stderr
