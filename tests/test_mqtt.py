"""The mqtt sink against a real mosquitto on 127.0.0.1 and a real subscribing paho client."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, Received, Subscriber, mosquitto_fixture
from canbridge_plugins.mqtt import MqttSink
from canbridge_plugins.mqtt import link as link_module
from canbridge_plugins.mqtt.homeassistant import discovery_config
from conftest import wait_until

import canbridge
from canbridge import Clock, Update
from canbridge.testing import build, feed, run_timers

broker = mosquitto_fixture()
late_broker = mosquitto_fixture(start=False)
secure_broker = mosquitto_fixture(users={"canbridge": "s3cret"})

# What the discover-lynk2 source decodes from the first second of lynk2-sample.log.
LIMITS = {"charge_voltage_limit": 55.900000000000006, "charge_current_limit": 282.0,
          "discharge_current_limit": 282.0, "discharge_voltage_limit": 43.2}
MEASURED = {"soc": 72, "soh": 100, "capacity_nominal": 300, "capacity_remaining": 216,
            "voltage": 53.5, "current": 0.4, "temperature": 28.0}
FLAGS = {"alarm_general": False, "alarm_high_voltage": False, "warning_high_voltage": False}
IDENTITY = {"manufacturer": "DISCOVER", "model": "Discover AES",
            "firmware_version": "2.1.0.0", "protocol_version": "1"}
HEALTH = {"lynk": {"state": "ok", "frames_in": 15, "errors": 0, "last_seen_age": 0.2},
          "inverter": {"state": "ok", "frames_out": 6, "safety": "normal",
                       "inverter_alive": True}}

STATE = "canbridge/battery/state"
STATUS = "canbridge/battery/status"
VOLTAGE_CONFIG = "homeassistant/sensor/battery/voltage/config"
DEVICE = {"identifiers": ["canbridge_battery"], "name": "battery",
          "sw_version": canbridge.__version__, "manufacturer": "DISCOVER",
          "model": "Discover AES"}
ORIGIN = {"name": "canbridge", "sw_version": canbridge.__version__}


@pytest.fixture
def make_sink() -> Iterator[Callable[..., MqttSink]]:
    """Build started sinks on a virtual clock (the network is real); stop them afterwards."""
    sinks: list[MqttSink] = []

    def make(server: Mosquitto, clock: Clock, **options: Any) -> MqttSink:
        context = {"health": lambda: HEALTH, **options.pop("context", {})}
        sink = build(MqttSink, {"inputs": ["lynk"], "host": server.host, "port": server.port,
                                **options}, name="mqtt", clock=clock, **context)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.stop()


def tick(clock: Clock, secs: float = 5.0) -> None:
    clock.advance_to(clock.now() + secs)
    run_timers(clock)


def wait_for_state(sub: Subscriber, clock: Clock, after: int, timeout: float = 5.0) -> Received:
    """Tick the publish timer until a state message newer than `after` arrives."""
    deadline = time.monotonic() + timeout
    while True:
        tick(clock)
        try:
            return sub.wait(STATE, after=after, timeout=0.25)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def test_the_same_identity_again_announces_nothing_again(broker, make_sink):
    """The LYNK II sends its identity every 10 s: only a change sends every config again."""
    clock = Clock(virtual=True, start=1000.0)
    with Subscriber(broker) as sub:
        sink = make_sink(broker, clock)
        feed(sink, Update(1000.0, {**MEASURED, **IDENTITY}))
        sub.wait(VOLTAGE_CONFIG, lambda m: "manufacturer" in m.json()["device"])
        mark = sub.mark()
        feed(sink, Update(1010.0, IDENTITY))
        feed(sink, Update(1010.5, {"alarm_low_voltage": False}))  # a signal not seen yet
        sub.wait("homeassistant/binary_sensor/battery/alarm_low_voltage/config", after=mark)
        assert VOLTAGE_CONFIG not in [m.topic for m in sub.messages[mark:]]
        mark = sub.mark()
        feed(sink, Update(1020.0, {**IDENTITY, "model": "Discover AES 48-48-5120"}))
        assert sub.wait(VOLTAGE_CONFIG, after=mark).json()["device"]["model"] == (
            "Discover AES 48-48-5120")


def test_without_discovery_only_the_state_goes_out(broker, make_sink):
    clock = Clock(virtual=True, start=1000.0)
    with Subscriber(broker) as sub:
        sink = make_sink(broker, clock, discovery=False)
        feed(sink, Update(1000.0, {**MEASURED, **IDENTITY}))
        tick(clock)
        assert sub.wait(STATE).json()["soc"] == 72
        assert [m.topic for m in sub.messages if m.topic.startswith("homeassistant/")] == []


def test_discovery_state_availability_and_clean_stop(broker, make_sink):
    clock = Clock(virtual=True, start=1000.0)
    with Subscriber(broker) as sub:
        sink = make_sink(broker, clock)
        assert sub.wait(STATUS).payload == b"online"
        feed(sink, Update(1000.0, {**LIMITS, **MEASURED, **FLAGS}))
        plain = sub.wait(VOLTAGE_CONFIG).json()
        assert plain["device"] == {"identifiers": ["canbridge_battery"], "name": "battery",
                                   "sw_version": canbridge.__version__}
        # identification arrives later (every 10 s): every config is sent again with it
        feed(sink, Update(1000.5, IDENTITY))
        config = sub.wait(VOLTAGE_CONFIG, lambda m: "manufacturer" in m.json()["device"]).json()
        assert config == {
            "unique_id": "canbridge_battery_voltage", "name": "Voltage",
            "state_topic": STATE, "availability_topic": STATUS,
            "value_template": "{{ value_json.voltage }}", "unit_of_measurement": "V",
            "device_class": "voltage", "state_class": "measurement",
            "device": DEVICE, "origin": ORIGIN}
        alarm = sub.wait("homeassistant/binary_sensor/battery/alarm_high_voltage/config",
                         lambda m: "manufacturer" in m.json()["device"]).json()
        assert alarm == {
            "unique_id": "canbridge_battery_alarm_high_voltage", "name": "Alarm high voltage",
            "state_topic": STATE, "availability_topic": STATUS,
            "value_template": "{{ 'ON' if value_json.alarm_high_voltage else 'OFF' }}",
            "payload_on": "ON", "payload_off": "OFF", "device_class": "problem",
            "device": DEVICE, "origin": ORIGIN}
        text = sub.wait("homeassistant/sensor/battery/manufacturer/config").json()
        assert "unit_of_measurement" not in text and "state_class" not in text
        assert text["entity_category"] == "diagnostic"
        units = {name: sub.wait(f"homeassistant/sensor/battery/{name}/config").json()
                 for name in ("soc", "soh", "current", "temperature", "capacity_remaining")}
        assert {name: (c["unit_of_measurement"], c.get("device_class"), c["state_class"])
                for name, c in units.items()} == {
            "soc": ("%", "battery", "measurement"), "soh": ("%", None, "measurement"),
            "current": ("A", "current", "measurement"),
            "temperature": ("°C", "temperature", "measurement"),
            "capacity_remaining": ("Ah", None, "measurement")}

        assert sub.received(STATE) == []
        tick(clock)  # publish_every_secs = 5
        state_message = sub.wait(STATE)
        assert b'"charge_voltage_limit": 55.9,' in state_message.payload
        state = state_message.json()
        assert state == {**LIMITS, "charge_voltage_limit": 55.9, **MEASURED, **FLAGS,
                         **IDENTITY, "health": HEALTH}
        assert type(state["soc"]) is int and type(state["voltage"]) is float
        assert state["alarm_general"] is False

        # an alarm turning on is published at once, not at the next period
        mark = sub.mark()
        feed(sink, Update(1005.2, {"alarm_general": True}))
        assert sub.wait(STATE, after=mark, timeout=2).json()["alarm_general"] is True

        # a report that leaves it out (now "not supported") ends it, also at once
        mark = sub.mark()
        feed(sink, Update(1005.3, {"alarm_report": "received", "alarm_high_voltage": False}))
        ended = sub.wait(STATE, after=mark, timeout=2).json()
        assert "alarm_general" not in ended
        assert (ended["alarm_high_voltage"], ended["alarm_report"]) == (False, "received")

        # Home Assistant restarting asks for discovery again
        mark = sub.mark()
        sub.publish("homeassistant/status", "online")
        sub.wait(VOLTAGE_CONFIG, after=mark)

        # a signal never seen is never announced
        topics = {m.topic for m in sub.messages}
        assert "homeassistant/binary_sensor/battery/alarm_internal/config" not in topics
        assert "homeassistant/sensor/battery/soc_reported/config" not in topics
        assert sink.status()["state"] == "connected"

    with Subscriber(broker) as late:  # a newcomer gets availability and discovery retained
        status = late.wait(STATUS)
        assert (status.payload, status.retain) == (b"online", True)
        assert late.wait(VOLTAGE_CONFIG).retain is True

        mark = late.mark()
        sink.stop()
        assert late.wait(STATUS, after=mark).payload == b"offline"
        final = sink.status()
    assert final["state"] == "disconnected"
    assert final["published"] >= 30 and final["errors"] == 0 and final["last_error"] is None


def test_legacy_discover_storage_topic(broker, make_sink):
    # real time keeps pace with pipeline time (a replay at speed 1): every state goes out
    clock = Clock(virtual=True, start=50.0, real_time=lambda: clock.now())
    with Subscriber(broker, ("DiscoverStorage",)) as sub:
        sink = make_sink(broker, clock, legacy_topic="DiscoverStorage", discovery=False)
        feed(sink, Update(50.0, {**LIMITS, **MEASURED, **FLAGS, **IDENTITY}))
        tick(clock)
        assert sub.wait("DiscoverStorage").json() == {
            "stateOfCharge": 72, "stateOfHealth": 100, "batteryVoltage": 53.5,
            "batteryCurrent": 0.4, "batteryTemperature": 28.0, "batteryTemperatureF": 82.4,
            "requestedChargeVoltage": 55.9, "requestedChargeCurrent": 282.0,
            "requestedMaximumDischargeCurrent": 282.0, "lowBatteryCutOutVoltage": 43.2,
            "batteryNominalCapacity": 300, "batteryRemainingCapacity": 216,
            "manufacturer": "DISCOVER", "lynxFirmwareVersion": "2.1.0.0",
            "protocolVersion": "1", "inverterFakeoutSOC": 72, "isCellBalancingActive": False,
            "cellBalancingRemainingTime": 0}

        mark = sub.mark()
        feed(sink, Update(56.0, {"soc": 100, "soc_reported": 99, "balancing_active": True,
                                     "balancing_remaining": 1234.4, "temperature": 12.34}))
        tick(clock)
        legacy = sub.wait("DiscoverStorage", after=mark).json()
        assert {key: legacy[key] for key in (
            "stateOfCharge", "inverterFakeoutSOC", "isCellBalancingActive",
            "cellBalancingRemainingTime", "batteryTemperature", "batteryTemperatureF")} == {
            "stateOfCharge": 100, "inverterFakeoutSOC": 99, "isCellBalancingActive": True,
            "cellBalancingRemainingTime": 1234, "batteryTemperature": 12.3,
            "batteryTemperatureF": 54.2}


def test_at_full_speed_periodic_states_are_paced_in_real_time(broker, make_sink):
    """A virtual clock (speed "max") runs through periodic states far faster than anyone
    reads them: one is built per publish_every_secs of real time; an alarm change goes out
    at once whatever the pace."""
    real = [1000.0]
    clock = Clock(virtual=True, start=50.0, real_time=lambda: real[0])
    with Subscriber(broker, (STATE,)) as sub:
        sink = make_sink(broker, clock, discovery=False, publish_every_secs=5)
        feed(sink, Update(50.0, {**LIMITS, **MEASURED, **FLAGS}))
        tick(clock)
        assert sub.wait(STATE).json()["soc"] == 72
        for second in range(10):  # 50 s of pipeline time in no real time: none built
            feed(sink, Update(clock.now(), {"soc": 73 + second}))
            tick(clock)
        assert sink.status()["states_skipped"] == 10
        mark = sub.mark()
        feed(sink, Update(clock.now(), {**FLAGS, "alarm_report": True,
                                        "alarm_high_voltage": True}))
        assert sub.wait(STATE, after=mark).json()["alarm_high_voltage"] is True
        real[0] += 5.0
        mark = sub.mark()
        tick(clock)
        assert sub.wait(STATE, after=mark).json()["soc"] == 82
        assert sink.status()["states_skipped"] == 10


def test_broker_down_at_start_then_appears(late_broker, make_sink):
    clock = Clock(virtual=True)
    started = time.perf_counter()
    sink = make_sink(late_broker, clock)
    for second in range(20):  # the engine thread never waits on the missing broker
        feed(sink, Update(float(second), {**MEASURED, "alarm_general": second % 2 == 1}))
        tick(clock, 1.0)
    assert time.perf_counter() - started < 0.5
    wait_until(lambda: sink.status()["last_error"] is not None)
    assert sink.status()["state"] == "disconnected"
    assert sink.status()["last_error"] == (f"cannot reach broker 127.0.0.1:{late_broker.port}: "
                                           "[Errno 111] Connection refused")

    late_broker.start()
    with Subscriber(late_broker) as sub:
        assert sub.wait(STATUS, timeout=5).payload == b"online"
        sub.wait(VOLTAGE_CONFIG)
        assert wait_for_state(sub, clock, after=0).json()["soc"] == 72
    assert sink.status()["state"] == "connected"


def test_broker_restart_reconnects_and_announces_again(broker, make_sink, caplog):
    caplog.set_level(logging.INFO, logger="canbridge.mqtt")
    clock = Clock(virtual=True)
    sink = make_sink(broker, clock)
    feed(sink, Update(0.0, {**LIMITS, **MEASURED}))
    with Subscriber(broker) as sub:
        sub.wait(VOLTAGE_CONFIG)
        wait_for_state(sub, clock, after=0)

    restarted = time.monotonic()
    broker.restart()  # without persistence: every retained message is gone
    with Subscriber(broker) as sub:
        assert sub.wait(STATUS, lambda m: m.payload == b"online").payload == b"online"
        assert sub.wait(VOLTAGE_CONFIG).json()["unit_of_measurement"] == "V"
        assert sub.wait(STATE).json()["voltage"] == 53.5  # the latest, sent on reconnection
    assert time.monotonic() - restarted < 5.0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("lost connection to MQTT broker" in m for m in messages) == 1
    assert sum(m == f"connected to MQTT broker 127.0.0.1:{broker.port}" for m in messages) == 2
    assert sink.status()["errors"] >= 1


def test_password_file_relative_to_the_pipeline(secure_broker, make_sink, tmp_path):
    (tmp_path / "mqtt.secret").write_text("s3cret\n")
    with Subscriber(secure_broker) as sub:
        make_sink(secure_broker, Clock(virtual=True), username="canbridge",
                  password_file="mqtt.secret", context={"pipeline_dir": str(tmp_path)})
        assert sub.wait(STATUS).payload == b"online"


def test_plain_password_works_with_a_warning(secure_broker, make_sink, caplog):
    with Subscriber(secure_broker) as sub:
        make_sink(secure_broker, Clock(virtual=True), username="canbridge", password="s3cret")
        assert sub.wait(STATUS).payload == b"online"
    assert ("mqtt: password is written in the pipeline file; prefer password_file"
            in caplog.messages)


def test_wrong_password_is_a_clear_error_and_retried(secure_broker, make_sink, caplog):
    caplog.set_level(logging.INFO, logger="canbridge.mqtt")
    sink = make_sink(secure_broker, Clock(virtual=True), username="canbridge",
                     password="wrong")
    wait_until(lambda: sink.status()["errors"] >= 2)  # refused, waited, tried again
    status = sink.status()
    assert status["state"] == "disconnected"
    address = f"127.0.0.1:{secure_broker.port}"
    assert status["last_error"] == f"broker {address} refused the connection: Not authorized"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"MQTT broker {address} refused the connection: Not authorized "
                      "(check username and password); retrying"]


def test_a_sink_that_never_started_stops_at_once(broker):
    """Another component's start failed: the engine stops every component, this one too."""
    sink = build(MqttSink, {"inputs": ["lynk"], "host": broker.host, "port": broker.port},
                 name="mqtt", start=False, health=lambda: HEALTH)
    assert sink.status()["state"] == "connecting"
    started = time.monotonic()
    sink.stop()
    assert time.monotonic() - started < 0.1  # no wait for a connection nobody began
    assert sink.status()["state"] == "disconnected"


def test_unreadable_password_file_is_reported_not_raised(broker, make_sink, tmp_path):
    sink = make_sink(broker, Clock(virtual=True), username="canbridge",
                     password_file=str(tmp_path / "missing"))
    wait_until(lambda: sink.status()["errors"] >= 1)
    status = sink.status()
    assert status["state"] == "error"
    assert status["last_error"].startswith(f"cannot set up MQTT: {tmp_path / 'missing'}: "
                                           "cannot read (")
    (tmp_path / "missing").write_text("s3cret\n")  # fixing the file is enough
    wait_until(lambda: sink.status()["state"] == "connected", timeout=10.0)


@pytest.mark.parametrize(("options", "problem"), [
    ({"password": "x"}, "password: needs username"),
    ({"username": "u", "password": "x", "password_file": "f"},
     "password: give password or password_file, not both"),
    ({"ca_file": "ca.pem"}, "ca_file: needs tls = true"),
    ({"tls": True, "key_file": "k.pem"}, "key_file: needs cert_file"),
    ({"node_id": "my battery"}, "node_id: may hold only letters, digits, _ and -"),
    ({"topic_prefix": "home/#"}, "topic_prefix: must not contain the wildcards + or #"),
    ({"legacy_topic": "/DiscoverStorage"},
     "legacy_topic: must be a topic without a leading or trailing /"),
    ({"qos": 3}, "qos: 3 is not one of 0, 1, 2"),
])
def test_option_problems(options, problem):
    with pytest.raises(ValueError) as error:
        build(MqttSink, {"inputs": ["lynk"], **options}, start=False)
    assert str(error.value) == problem


def test_node_id_defaults_to_the_pipeline_name(tmp_path: Path):
    sink = build(MqttSink, {"inputs": ["lynk"]}, start=False, pipeline_name="garage bank")
    assert (sink.state_topic, sink.status_topic) == ("canbridge/garage_bank/state",
                                                     "canbridge/garage_bank/status")
    named = build(MqttSink, {"inputs": ["lynk"], "node_id": "rack2", "topic_prefix": "solar"},
                  start=False)
    assert named.state_topic == "solar/rack2/state"


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA, and a server certificate for 127.0.0.1 signed by it."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=canbridge test CA")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.ext")
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")
def test_tls_with_a_private_ca_and_a_clear_error_without_it(make_sink, tmp_path):
    ca, cert, key = _certificates(tmp_path)
    extra = (f"cafile {ca}", f"certfile {cert}", f"keyfile {key}")
    with Mosquitto(tmp_path / "mosquitto", extra=extra) as server:
        trusting = make_sink(server, Clock(virtual=True), tls=True, ca_file=str(ca))
        wait_until(lambda: trusting.status()["state"] == "connected")

        doubting = make_sink(server, Clock(virtual=True), tls=True, node_id="other")
        wait_until(lambda: doubting.status()["errors"] >= 1)
        assert doubting.status()["state"] == "disconnected"
        assert "CERTIFICATE_VERIFY_FAILED" in doubting.status()["last_error"]


def test_stop_is_quick_while_a_connect_hangs(tmp_path: Path) -> None:
    """A broker address that swallows connection attempts must not hold up a SIGTERM."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):  # fill the accept queue: later SYNs are dropped and connect() hangs
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        sink = build(MqttSink, {"inputs": ["lynk"], "host": "127.0.0.1", "port": port},
                     name="mqtt", clock=Clock(virtual=True), health=lambda: HEALTH)
        wait_until(lambda: sink.status()["state"] != "connected", timeout=1.0)
        time.sleep(0.3)  # let paho's thread enter its connect attempt
        started = time.monotonic()
        sink.stop()
        assert time.monotonic() - started < 1.5
    finally:
        for filler in fillers:
            filler.close()
        server.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")
def test_an_encrypted_key_is_refused_by_validate_never_prompted_for(tmp_path):
    """OpenSSL would ask for the passphrase on the terminal and block start-up."""
    _, cert, key = _certificates(tmp_path)
    subprocess.run(["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:secret",
                    "-out", str(tmp_path / "locked.key")], check=True, capture_output=True)
    locked = tmp_path / "locked.key"
    options = {"inputs": ["lynk"], "tls": True, "cert_file": str(cert), "key_file": str(locked)}
    with pytest.raises(ValueError) as excinfo:
        build(MqttSink, options, start=False)
    assert str(excinfo.value) == (f"key_file: {locked} is encrypted: give key_password_file "
                                  "(canbridge never prompts for a passphrase)")
    (tmp_path / "passphrase").write_text("secret\n")
    build(MqttSink, {**options, "key_password_file": str(tmp_path / "passphrase")},
          start=False)  # with the passphrase from a file: fine
    (tmp_path / "passphrase").write_text("wrong\n")
    with pytest.raises(ValueError, match=r"cert_file: .* / key_file .*locked.key: not a usable "
                                         r"certificate and key"):
        build(MqttSink, {**options, "key_password_file": str(tmp_path / "passphrase")},
              start=False)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")
def test_a_client_certificate_with_an_encrypted_key_is_let_in(make_sink, tmp_path):
    """A broker that asks every client for a certificate: canbridge's, its key encrypted
    and the passphrase read from key_password_file, is let in."""
    ca, cert, key = _certificates(tmp_path)
    locked = tmp_path / "locked.key"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:secret",
                    "-out", str(locked)], check=True, capture_output=True)
    (tmp_path / "passphrase").write_text("secret\n")
    extra = (f"cafile {ca}", f"certfile {cert}", f"keyfile {key}", "require_certificate true")
    with Mosquitto(tmp_path / "mosquitto", extra=extra) as server:
        certified = make_sink(server, Clock(virtual=True), tls=True, ca_file=str(ca),
                              cert_file=str(cert), key_file=str(locked),
                              key_password_file=str(tmp_path / "passphrase"))
        wait_until(lambda: certified.status()["state"] == "connected")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")
def test_a_missing_tls_file_is_named_and_retried_with_backoff(tmp_path, caplog):
    """At run time (the file vanished after validate): the file is named, on the MQTT
    thread (the engine thread reads no file), and MQTT is tried again with backoff rather
    than left off for the whole run: once the file is back, it connects."""
    ca, cert, key = _certificates(tmp_path)
    extra = (f"cafile {ca}", f"certfile {cert}", f"keyfile {key}")
    with Mosquitto(tmp_path / "mosquitto", extra=extra) as server:
        sink = build(MqttSink, {"inputs": ["lynk"], "tls": True, "host": server.host,
                                "port": server.port, "ca_file": str(ca)},
                     name="mqtt", clock=Clock(virtual=True, start=0.0), health=lambda: HEALTH,
                     start=False)
        kept = ca.read_bytes()
        ca.unlink()
        with caplog.at_level(logging.ERROR):
            sink.start()
            status: dict[str, Any] = {}

            def failed_twice() -> bool:  # the thread's backoff: 0.5 s, 1 s
                status.update(sink.status())  # one snapshot: the state moves while retrying
                return status["errors"] >= 2 and status["state"] == "error"

            wait_until(failed_twice)
            ca.write_bytes(kept)
            wait_until(lambda: sink.status()["state"] == "connected")
            sink.stop()
    assert status["last_error"] == f"cannot set up MQTT: ca_file {ca}: no such file"
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot set up MQTT: ca_file {ca}: no such file; trying again with backoff"]


def test_a_secret_file_that_blocks_never_holds_up_the_engine_thread(broker, tmp_path):
    """The password file is read on the MQTT thread: one on a stalled disk (here a FIFO
    nobody writes) leaves the engine thread free, and the stop still comes at once."""
    fifo = tmp_path / "password"
    os.mkfifo(fifo)
    sink = build(MqttSink, {"inputs": ["lynk"], "host": "127.0.0.1", "port": broker.port,
                            "username": "canbridge", "password_file": str(fifo)},
                 name="mqtt", clock=Clock(virtual=True), start=False)
    starter = threading.Thread(target=sink.start, daemon=True)
    starter.start()
    starter.join(2.0)
    assert not starter.is_alive()
    stopped = time.monotonic()
    sink.stop()
    assert time.monotonic() - stopped < 2.0
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # lets the MQTT thread's read end


def make_link(client_id: str = "test", port: int = 1, qos: int = 1) -> link_module.Link:
    """A link with availability on bat/status, not started (port 1: no broker there)."""
    return link_module.Link(link_module.Settings("127.0.0.1", port, client_id, qos,
                                                 "bat/status"), logging.getLogger("test"))


def test_alarm_changes_wait_apart_up_to_max_kept_and_a_sent_batch_makes_room(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A state with an alarm change is never replaced by the next state, up to MAX_KEPT
    waiting (a broker away for long must not grow memory); past that they coalesce."""
    monkeypatch.setattr(link_module, "MAX_KEPT", 3)
    link = make_link()
    for n in range(5):
        link.publish("bat/state", f"alarm {n}", keep=True)
    link.publish("bat/state", "periodic")
    assert [m.payload for m in link._take()] == ["alarm 0", "alarm 1", "alarm 2", "periodic"]
    assert link.dropped == 2
    for n in range(2):
        link.publish("bat/state", f"alarm {n}", keep=True)
    assert [m.payload for m in link._take()] == ["alarm 0", "alarm 1"]


@pytest.mark.parametrize(("qos", "dropped"), [(0, 1), (1, 0)])
def test_a_publish_the_lost_connection_refuses_is_kept_only_with_qos(qos: int,
                                                                     dropped: int) -> None:
    """paho keeps a QoS 1 message for the reconnection; a QoS 0 one is lost, counted and not
    an error (the connection's loss was told already). A real, never connected, client."""
    from canbridge_plugins.mqtt.pahoclient import CallbackAPIVersion, Client

    link = make_link(qos=qos)
    link._send(Client(CallbackAPIVersion.VERSION2, client_id="test"),
               link_module.Message("bat/state", "{}", False))
    assert (link.dropped, link.errors) == (dropped, 0)


def test_published_counts_what_the_broker_acknowledged(broker: Mosquitto) -> None:
    link = make_link("counted", broker.port)
    with Subscriber(broker) as sub:
        link.start()
        for n in range(3):
            link.publish(f"bat/{n}", str(n), keep=True)
        wait_until(lambda: {"bat/0", "bat/1", "bat/2"} <= {m.topic for m in sub.messages})
        wait_until(lambda: link.status()["published"] == 4)  # online and the 3, acknowledged
        link.close()
        sub.wait("bat/status", lambda m: m.payload == b"offline")
    assert link.status() == {"state": "disconnected", "published": 5, "dropped": 0,
                             "errors": 0, "last_error": None}  # and offline


def test_a_message_paho_refuses_costs_only_that_message(broker: Mosquitto) -> None:
    """paho raises for some messages (here a topic with a wildcard, which the sink's own
    checks never let through): the publisher thread counts it and goes on publishing."""
    link = make_link("refused", broker.port)
    with Subscriber(broker) as sub:
        link.start()
        wait_until(lambda: link.status()["state"] == "connected")
        link.publish("bat/+", "refused")
        wait_until(lambda: link.status()["errors"] == 1)
        link.publish("bat/after", "sent")
        sub.wait("bat/after")
        assert (link.status()["dropped"], link.status()["state"]) == (1, "connected")
        link.close()
    assert link.status()["last_error"] == (
        "publish to bat/+ failed: ValueError('Publish topic cannot contain wildcards.')")


def test_a_handler_that_raises_costs_only_that_message(broker: Mosquitto, caplog) -> None:
    """paho ends its network thread on an exception from a callback: a fault in handling
    one command must not leave MQTT dead for the run."""
    link = make_link("handled", broker.port)
    handled: list[bytes] = []

    def handler(payload: bytes) -> None:
        if payload == b"bad":
            raise RuntimeError("a bug in the handler")
        handled.append(payload)

    link.subscribe("bat/set/x", handler)
    with Subscriber(broker) as sub, caplog.at_level(logging.ERROR):
        sub.publish("bat/set/x", "bad", retain=True)  # delivered as the link subscribes
        link.start()
        wait_until(lambda: link.status()["errors"] == 1)
        sub.publish("bat/set/x", "good")
        wait_until(lambda: handled == [b"good"])
        status = link.status()
        link.close()
    assert (status["state"], status["errors"], status["last_error"]) == (
        "connected", 1,
        "handling a message on bat/set/x failed: RuntimeError('a bug in the handler')")
    assert [r.getMessage() for r in caplog.records] == [
        "handling a message on bat/set/x failed: RuntimeError('a bug in the handler')"]


@pytest.mark.parametrize(("name", "value", "component", "extra"), [
    ("glitch_active", True, "binary_sensor", {
        "value_template": "{{ 'ON' if value_json.glitch_active else 'OFF' }}",
        "payload_on": "ON", "payload_off": "OFF"}),
    ("cell_delta_mv", 12, "sensor", {"value_template": "{{ value_json.cell_delta_mv }}",
                                     "state_class": "measurement"}),
    ("pack_serial", "A123", "sensor", {"value_template": "{{ value_json.pack_serial }}"}),
])
def test_a_signal_outside_the_table_is_announced_by_its_value(
        name: str, value: object, component: str, extra: dict[str, str]) -> None:
    """A plugin's own signal (a transform's `<name>_active`, say): a flag is a binary
    sensor, a number a measurement, text a plain sensor; the label comes from the name."""
    topic, config = discovery_config(name, value, node_id="bat", discovery_prefix="ha",
                                     state_topic="c/bat/state", availability_topic="c/bat/s",
                                     device={"name": "bat"})
    assert topic == f"ha/{component}/bat/{name}/config"
    assert config == {"unique_id": f"canbridge_bat_{name}",
                      "name": name.replace("_", " ").capitalize(),
                      "state_topic": "c/bat/state", "availability_topic": "c/bat/s",
                      "device": {"name": "bat"}, "origin": ORIGIN, **extra}
