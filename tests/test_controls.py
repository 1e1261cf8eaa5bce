"""Controls from Home Assistant: a real mosquitto, the mqtt sink with `control = true`, the
controls transform and a pylontech sink on a virtual inverter bus, all on one virtual clock.

Commands arrive on paho's thread; the sink posts them to the "engine thread", which here is
the test itself draining the queue (as the engine does between frames).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from broker import Subscriber, mosquitto_fixture
from canbridge_plugins.balancing import CellBalancing
from canbridge_plugins.control import Controls
from canbridge_plugins.mqtt import MqttSink
from conftest import wait_until
from test_pylontech import LYNK_SAMPLE, NORMAL_BURST, T0, Rig, hexes

from canbridge import Update, writer
from canbridge.controls import BUTTON, NUMBER, SWITCH, Command, Control, ControlBoard
from canbridge.testing import build

broker = mosquitto_fixture()
BASE = "canbridge/battery"


class Bridge:
    """controls -> pylontech on a virtual bus, an mqtt sink with control = true."""

    def __init__(self, server: Any, tmp_path: Path, start_at: float = T0, **controls: Any):
        self.board = ControlBoard()
        self.posted: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.rig = Rig()
        self.rig.clock.advance_to(start_at)
        context = {"controls": self.board, "post": self.posted.put}
        self.controls = build(Controls, {"inputs": ["lynk"],
                                         "state_file": str(tmp_path / "controls.toml"),
                                         **controls},
                              name="control", clock=self.rig.clock, **context)
        self.controls._emit = self.rig.sink.on_update
        self.mqtt = None
        if server is not None:
            self.mqtt = build(MqttSink, {"inputs": ["control"], "host": server.host,
                                         "port": server.port, "control": True},
                              name="mqtt", clock=self.rig.clock, **context)

    def feed(self, at: float) -> None:
        self.rig.run_until(at)
        self.controls.on_update(Update(at, LYNK_SAMPLE))

    def run_commands(self, count: int = 1, timeout: float = 5.0) -> None:
        """Run `count` commands posted from paho's thread, as the engine thread would."""
        for _ in range(count):
            self.posted.get(timeout=timeout)()

    def burst(self, at: float) -> dict[int, str]:
        self.rig.run_until(at)
        return hexes(self.rig.last_burst())

    def close(self) -> None:
        if self.mqtt is not None:
            self.mqtt.stop()
        self.rig.close()


@pytest.fixture
def bridge(broker, tmp_path):
    made: list[Bridge] = []

    def make(**controls: Any) -> Bridge:
        made.append(Bridge(broker, tmp_path, **controls))
        return made[-1]

    yield make
    for item in made:
        item.close()


def test_home_assistant_finds_every_control_as_an_entity(broker, bridge):
    with Subscriber(broker) as sub:
        bridge()
        number = sub.wait("homeassistant/number/battery/charge_current_max/config").json()
        assert number == {
            "unique_id": "canbridge_battery_control_charge_current_max",
            "name": "Largest charge current limit",
            "command_topic": f"{BASE}/set/charge_current_max",
            "state_topic": f"{BASE}/control/charge_current_max",
            "availability_topic": f"{BASE}/status",
            "min": 0.0, "max": 3276.7, "step": 0.1, "mode": "box",
            "unit_of_measurement": "A", "entity_category": "config",
            "device": {"identifiers": ["canbridge_battery"], "name": "battery",
                       "sw_version": number["device"]["sw_version"]},
            "origin": number["origin"]}
        switch = sub.wait("homeassistant/switch/battery/charging/config").json()
        assert (switch["command_topic"], switch["payload_on"], switch["payload_off"]) == (
            f"{BASE}/set/charging", "ON", "OFF")
        sub.wait("homeassistant/number/battery/min_soc/config")
        sub.wait("homeassistant/switch/battery/discharging/config")
        # the current values, retained, for the entities' state
        assert sub.wait(f"{BASE}/control/charging").payload == b"ON"
        assert sub.wait(f"{BASE}/control/charge_current_max").payload == b"3276.7"


AMPS = Control("amps", NUMBER, "a cap", "A", minimum=0.0, maximum=100.0)
CHARGING = Control("charging", SWITCH, "charging allowed")
BALANCE_NOW = Control("balance_now", BUTTON, "balance now")


@pytest.mark.parametrize(("control", "payload", "command"), [
    (AMPS, b" 50\n", Command("amps", 50.0)),
    (AMPS, b' {"value": 20, "for_minutes": 5}\r\n', Command("amps", 20.0, 5.0)),
    (AMPS, "100", Command("amps", 100.0)),
    (AMPS, b'{"value": 5, "for_minutes": 0}', Command("amps", 5.0, 0.0)),  # 0: until changed
    (CHARGING, b"on", Command("charging", True)),
    (CHARGING, b"OFF", Command("charging", False)),
    (CHARGING, b'{"value": true}', Command("charging", True)),
    (CHARGING, b"0", Command("charging", False)),
    (BALANCE_NOW, b"press", Command("balance_now", None)),
    (BALANCE_NOW, b"{}", Command("balance_now", None)),
])
def test_a_command_is_read_from_a_plain_value_or_a_json_object(
        control: Control, payload: bytes | str, command: Command) -> None:
    assert control.parse(payload) == command


@pytest.mark.parametrize(("control", "payload", "reason"), [
    (AMPS, b"nan", "value: expected a finite number, got 'nan'"),
    (AMPS, b'{"value": true}', "value: expected a number, got True"),
    (AMPS, b'{"value": 5, "until": 3}', "unknown key 'until'"),
    (AMPS, b'{"for_minutes": 3}', 'expected {"value": ..., "for_minutes": ...}'),
    (AMPS, b"-0.1", "-0.1 is out of range (0..100)"),
    (CHARGING, b"maybe", "expected ON or OFF, got 'maybe'"),
    (BALANCE_NOW, b"ON", 'a button takes "PRESS", got \'ON\''),
])
def test_a_command_that_cannot_be_read_says_why(control: Control, payload: bytes,
                                                reason: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        control.parse(payload)
    assert str(excinfo.value) == reason


def test_the_board_keeps_each_controls_latest_value_and_tells_listeners() -> None:
    board, heard = ControlBoard(), []
    board.offer(AMPS, lambda command: None, 100.0)
    board.listen(lambda name, value: heard.append((name, value)))
    board.changed("amps", 20.0)
    assert (board.value("amps"), heard) == (20.0, [("amps", 20.0)])
    with pytest.raises(ValueError, match="control 'amps' is offered twice"):
        board.offer(AMPS, lambda command: None, 100.0)


def test_a_set_command_changes_the_frames_within_one_period(broker, bridge, caplog):
    bridge = bridge()
    bridge.feed(T0 + 0.5)
    assert bridge.burst(T0 + 0.5) == NORMAL_BURST
    with Subscriber(broker) as sub, caplog.at_level(logging.INFO):
        sub.wait(f"{BASE}/control/charge_current_max")
        mark = sub.mark()
        sub.publish(f"{BASE}/set/charge_current_max", "50")
        bridge.run_commands()
        # the very next burst (one period later, no new battery data) carries 50 A
        assert bridge.burst(T0 + 1.5)[0x351] == "2F 02 F4 01 04 0B B0 01"
        assert sub.wait(f"{BASE}/control/charge_current_max", after=mark).payload == b"50"
        sub.publish(f"{BASE}/set/charging", "OFF")
        bridge.run_commands()
        burst = bridge.burst(T0 + 2.5)
        assert (burst[0x351], burst[0x35C]) == ("2F 02 00 00 04 0B B0 01", "40 00")
    assert "control charge_current_max set to 50 A until changed" in caplog.text
    assert "control charging set to off until changed" in caplog.text


@pytest.mark.parametrize(("payload", "reason"), [
    ("5000", "5000 is out of range (0..3276.7)"),
    ("fifty", "value: expected a number, got 'fifty'"),
    ('{"value": 10, "for_minutes": -1}', "for_minutes must not be negative"),
    ('{"value": ', "not valid JSON"),
    ('{"value": ' + "[" * 100_000 + "]" * 100_000 + "}", "not valid JSON: nested too deeply"),
])
def test_bad_commands_are_refused_logged_and_change_nothing(broker, bridge, caplog, payload,
                                                            reason):
    bridge = bridge()
    with Subscriber(broker) as sub, caplog.at_level(logging.WARNING):
        sub.wait(f"{BASE}/control/charge_current_max")
        mark = sub.mark()
        sub.publish(f"{BASE}/set/charge_current_max", payload)
        deadline = time.monotonic() + 5
        while bridge.mqtt.commands_refused == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bridge.mqtt.status()["commands_refused"] == 1
        assert bridge.posted.empty()
        assert [m for m in sub.messages[mark:]
                if m.topic == f"{BASE}/control/charge_current_max"] == []
        sub.publish(f"{BASE}/set/charge_current_max", "50")  # the next command still counts
        wait_until(lambda: not bridge.posted.empty())
    assert f"refused {BASE}/set/charge_current_max" in caplog.text
    assert reason in caplog.text


def test_a_set_value_expires_on_the_pipeline_clock(broker, bridge, caplog):
    bridge = bridge()
    with Subscriber(broker) as sub, caplog.at_level(logging.INFO):
        sub.wait(f"{BASE}/control/charging")
        sub.publish(f"{BASE}/set/charging", '{"value": "OFF", "for_minutes": 2}')
        bridge.run_commands()
        for second in range(0, 125):
            bridge.feed(T0 + second + 0.5)
        bursts = bridge.rig.bursts()
        assert hexes(bursts[T0 + 119.5])[0x35C] == "40 00"  # 2 min after T0: still off
        assert hexes(bursts[T0 + 120.5])[0x35C] == "C0 00"  # expired at T0 + 120
        assert sub.wait(f"{BASE}/control/charging", lambda m: m.payload == b"ON",
                        after=1).payload == b"ON"
    assert "control charging set to off for 2 min" in caplog.text
    assert "control charging expired: back to the configured on" in caplog.text


def test_default_expiry_applies_when_a_command_names_none(tmp_path):
    bridge = Bridge(None, tmp_path, default_expiry_minutes=1.0)
    try:
        bridge.board.command(bridge.board.get("discharge_current_max").parse("20"))
        for second in range(10, 63):
            bridge.feed(T0 + second + 0.5)
        bursts = bridge.rig.bursts()
        assert hexes(bursts[T0 + 59.5])[0x351] == "2F 02 04 0B C8 00 B0 01"
        assert hexes(bursts[T0 + 60.5])[0x351] == NORMAL_BURST[0x351]  # expired at T0 + 60
    finally:
        bridge.close()


def test_persisted_values_survive_a_restart_and_expired_ones_do_not(tmp_path):
    first = Bridge(None, tmp_path, persist=True)
    board = first.board
    board.command(board.get("min_soc").parse("30"))
    board.command(board.get("charging").parse('{"value": "OFF", "for_minutes": 1}'))
    assert writer.flush()
    assert (tmp_path / "controls.toml").is_file()
    first.close()
    second = Bridge(None, tmp_path, persist=True)  # the same clock time: both still hold
    try:
        assert second.controls.values()["min_soc"] == 30.0
        assert second.controls.values()["charging"] is False
    finally:
        second.close()
    later = Bridge(None, tmp_path, persist=True, start_at=T0 + 61.0)
    try:  # a minute later the expiry has passed: the configured value applies again
        assert later.controls.values()["charging"] is True
        assert later.controls.values()["min_soc"] == 30.0
    finally:
        later.close()


@pytest.mark.parametrize("content", ["charging = ", "x = " + "[" * 5000 + "]" * 5000])
def test_an_unusable_state_file_costs_only_the_saved_values(tmp_path, caplog, content):
    (tmp_path / "controls.toml").write_text(content)
    with caplog.at_level(logging.ERROR):
        bridge = Bridge(None, tmp_path, persist=True)
    try:
        assert bridge.controls.values()["charging"] is True  # the configured value
        assert bridge.controls.errors == 1
        assert [m.split(" (")[0] for m in caplog.messages] == [
            f"control state file {tmp_path / 'controls.toml'} unusable"]
    finally:
        bridge.close()


def test_not_persisted_values_are_forgotten(tmp_path):
    first = Bridge(None, tmp_path)
    first.board.command(first.board.get("min_soc").parse("30"))
    assert writer.flush()
    first.close()
    assert not (tmp_path / "controls.toml").exists()


def test_balance_now_starts_a_hold_or_makes_one_due(tmp_path, caplog):
    board = ControlBoard()
    balancing = build(CellBalancing, {"inputs": ["lynk"], "every_days": 7,
                                      "state_file": str(tmp_path / "b.toml")},
                      controls=board)
    press = board.get("balance_now").parse("PRESS")
    with caplog.at_level(logging.INFO):
        balancing.on_update(Update(balancing.clock.now(), {"soc": 100}))
        assert balancing.holding  # never balanced: due, and SOC rose above 99 %
        board.command(press)
        assert "a balancing hold is already running" in caplog.text
    with pytest.raises(ValueError, match='a button takes "PRESS"'):
        board.get("balance_now").parse("now")
