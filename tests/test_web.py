"""The web page sink: its HTTP endpoints against a running pipeline, its bounds, and the
page itself rendered by a real browser (Debian's headless Chromium)."""

from __future__ import annotations

import http.client
import itertools
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import can
import pytest
from canbridge_plugins.web.sink import IDLE_REFRESH_SECS, WebSink, parse_listen
from conftest import (
    LYNK_TO_PYLONTECH,
    SAMPLE,
    canbridge_cmd,
    run_canbridge,
    subprocess_env,
    wait_until,
)

from canbridge import Clock, Update
from canbridge.testing import build, feed, run_timers

CHROMIUM = shutil.which("chromium")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Bridge:
    """`canbridge run` of the looped sample capture with a Pylontech and a web sink."""

    def __init__(self, folder: Path, history: Path | None = None):
        self.port = free_port()
        self.record = folder / "inverter.log"
        path = folder / "pipeline.toml"
        path.write_text(f"""
[status]
file = "{folder / 'status.json'}"
[buses.battery]
interface = "replay"
path = "{SAMPLE}"
loop = true
[buses.inverter]
interface = "virtual"
channel = "web-{uuid.uuid4()}"
record = "{self.record}"
{LYNK_TO_PYLONTECH}
[sinks.web]
type = "web"
inputs = ["lynk"]
listen = "127.0.0.1:{self.port}"
{f'history_file = "{history}"' if history else ''}
""")
        self.process = subprocess.Popen(canbridge_cmd("run", str(path)), env=subprocess_env(),
                                        stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                state = self.get("/api/state")[1]
                if state["status"]["components"]["inverter"]["safety"] == "normal":
                    break  # past the first burst, which precedes the first alarm report
            except (OSError, KeyError, ValueError):
                pass
            assert time.monotonic() < deadline, "the page never came up"
            time.sleep(0.2)

    def request(self, method: str, path: str, **kwargs: object) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        connection.request(method, path, **kwargs)  # type: ignore[arg-type]
        return connection.getresponse()

    def get(self, path: str) -> tuple[http.client.HTTPResponse, dict]:
        response = self.request("GET", path)
        return response, json.loads(response.read())

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=10)
        assert self.process.returncode == 0, stderr
        return stderr


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[Bridge]:
    running = Bridge(tmp_path)
    yield running
    if running.process.poll() is None:
        running.stop()


def test_the_json_endpoints_are_the_status_document_and_the_values(bridge: Bridge) -> None:
    response, state = bridge.get("/api/state")
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    assert "default-src 'none'" in response.getheader("Content-Security-Policy")
    values, status = state["values"], state["status"]
    assert (values["soc"], values["voltage"], values["power"]) == (72, 53.5,
                                                                   round(53.5 * values["current"],
                                                                         1))
    inverter = status["components"]["inverter"]
    assert inverter["sent"]["charge_current_limit"] == 282.0
    assert set(status) >= {"components", "buses", "engine", "pipeline"}  # `canbridge status`'s
    _, history = bridge.get("/api/history")
    assert history["series"] == ["soc", "voltage", "current", "charge_voltage_limit",
                                 "charge_current_limit", "discharge_current_limit",
                                 "discharge_voltage_limit"]
    assert history["soc"][:1] == [72.0] and len(history["time"]) >= 1
    _, events = bridge.get("/api/events")
    assert any("battery data complete" in e["message"] for e in events)
    assert len(events) <= 50
    for path in ("/", "/api/state"):  # sized and never cached: a reload shows now
        response = bridge.request("GET", path)
        body = response.read()
        assert int(response.getheader("Content-Length")) == len(body) > 0
        assert response.getheader("Cache-Control") == "no-store"


@pytest.mark.parametrize(("method", "path", "kwargs", "code"), [
    ("GET", "/etc/passwd", {}, 404),
    ("GET", "/api/state/../../secret", {}, 404),
    ("GET", "/" + "a" * 5000, {}, 414),
    ("POST", "/api/state", {"body": b"x" * 10}, 413),
    ("DELETE", "/api/state", {}, 405),
])
def test_unknown_paths_big_requests_and_writes_are_refused(bridge: Bridge, method: str,
                                                           path: str, kwargs: dict,
                                                           code: int) -> None:
    response = bridge.request(method, path, **kwargs)
    assert response.status == code
    assert response.getheader("X-Content-Type-Options") == "nosniff"


def test_the_can_cadence_holds_while_twenty_clients_poll_and_one_never_reads(
        bridge: Bridge) -> None:
    stop = threading.Event()
    served = []

    def poll() -> None:
        while not stop.is_set():
            try:
                bridge.get("/api/state")
                served.append(1)
            except OSError:
                pass

    stuck = socket.create_connection(("127.0.0.1", bridge.port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stuck.sendall(b"GET /api/history HTTP/1.1\r\nHost: x\r\n\r\n" * 200)  # and never reads
    clients = [threading.Thread(target=poll) for _ in range(20)]
    started = time.time()
    for client in clients:
        client.start()
    time.sleep(6)
    stop.set()
    for client in clients:
        client.join(10)
    stuck.close()
    bridge.stop()
    bursts = [m.timestamp for m in can.LogReader(str(bridge.record))
              if m.arbitration_id == 0x351 and m.timestamp >= started]
    gaps = [b - a for a, b in itertools.pairwise(bursts)]
    assert len(bursts) >= 5 and served
    assert max(gaps) < 1.3, gaps  # one burst a second, whatever the browsers do


def test_listening_beyond_loopback_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[buses.b]\ninterface = "virtual"\nchannel = "x"\n'
                    '[sources.s]\ntype = "discover-lynk2"\nbus = "b"\n'
                    '[sinks.web]\ntype = "web"\ninputs = ["s"]\nlisten = "0.0.0.0:8080"\n')
    result = run_canbridge("validate", str(path))
    assert result.returncode == 0
    assert ("sinks.web.listen: warning: serves on 0.0.0.0: the page (battery state, no "
            "controls) is readable from the network") in result.stderr


def write_history(path: Path) -> None:
    """Yesterday evening to now, one row every ten minutes: a data log's CSV day files."""
    now = datetime.now().astimezone()
    rows: dict[Path, list[str]] = {}
    for step in range(0, 12 * 6):
        when = now - timedelta(minutes=10 * step)
        day = path.with_name(f"{path.stem}-{when.date().isoformat()}{path.suffix}")
        rows.setdefault(day, []).append(
            f"{when.isoformat(timespec='seconds')},{50 + step % 40},{52 + step % 3 * 0.5},"
            f"{-10 + step % 20},55.9,282.0,282.0,43.2")
    for day, lines in rows.items():
        day.write_text("time,soc,voltage,current,charge_voltage_limit,charge_current_limit,"
                       "discharge_current_limit,discharge_voltage_limit\n"
                       + "\n".join(reversed(lines)) + "\n")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/test.sh installs "
                                             "it)")
def test_the_page_in_a_real_browser(tmp_path: Path) -> None:
    history = tmp_path / "log" / "battery.csv"
    history.parent.mkdir()
    write_history(history)
    bridge = Bridge(tmp_path, history=history)
    try:
        browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                   "--no-first-run", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=6000",
                   "--window-size=1100,1900"]
        url = f"http://127.0.0.1:{bridge.port}/"
        dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True,
                             timeout=120, check=True).stdout
        subprocess.run([*browser, f"--screenshot={tmp_path / 'page.png'}", url],
                       capture_output=True, timeout=120, check=True)
    finally:
        bridge.stop()
    assert 'id="soc" class="value">72 %<' in dom
    assert 'id="voltage" class="value">53.5 V<' in dom
    assert 'id="overall" class="pill ok">normal<' in dom
    soc_chart = dom[dom.index('id="chart-soc"'):dom.index('id="chart-voltage"')]
    points = soc_chart.split('points="')[1].split('"')[0].split()
    assert len(points) > 40  # the day's rows from the data log, drawn
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_beyond_max_clients_a_request_is_told_busy_until_a_slot_frees() -> None:
    sink = build(WebSink, {"inputs": ["lynk"], "listen": "127.0.0.1:0", "max_clients": 1},
                 clock=Clock(virtual=True, start=1745512155.0), start=False)
    sink.start()
    try:
        port = int(sink.listening.rsplit(":", 1)[1].rstrip("/"))

        def status_of_a_get() -> tuple[int, bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/api/state")
            response = connection.getresponse()
            answer = response.status, response.read()
            connection.close()
            return answer

        with socket.create_connection(("127.0.0.1", port)):  # holds the one slot, silent
            # Its server thread has taken the slot (read without taking it: a look that
            # took it could have the silent client refused instead).
            wait_until(lambda: sink._server.slots._value == 0)
            status, body = status_of_a_get()
            assert status == 503 and b"busy: too many clients" in body
        wait_until(lambda: status_of_a_get()[0] == 200)  # its slot is free again
        assert sink.refused >= 1  # more when a GET came before the closed slot was freed
    finally:
        sink.stop()


@pytest.mark.parametrize(("text", "parsed"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("::1", 0)),
    ("0.0.0.0:65535", ("0.0.0.0", 65535)), (":8080", None), ("localhost", None),
    ("127.0.0.1:http", None), ("127.0.0.1:65536", None), ("127.0.0.1:-1", None)])
def test_listen_is_host_colon_port(text: str, parsed: tuple[str, int] | None) -> None:
    if parsed is not None:
        assert parse_listen(text) == parsed
    else:
        with pytest.raises(ValueError, match=r"is not HOST:PORT \(port 0: any free one\)"):
            parse_listen(text)


def test_the_snapshot_is_rebuilt_each_second_only_while_someone_reads_it() -> None:
    t0 = 1745512155.0
    clock = Clock(virtual=True, start=t0)
    sink = build(WebSink, {"inputs": ["lynk"], "listen": "127.0.0.1:0"}, clock=clock,
                 start=False)
    sink.start()
    try:
        def soc_shown() -> object:
            return json.loads(sink.state_json)["values"].get("soc")

        feed(sink, Update(t0, {"soc": 50}))
        run_timers(clock, t0 + 5.0)
        assert soc_shown() is None  # nobody reads: the start-up snapshot stands
        sink.state_reads += 1  # what a GET /api/state does
        run_timers(clock, t0 + 6.0)
        assert soc_shown() == 50
        feed(sink, Update(t0 + 6.5, {"soc": 51}))
        run_timers(clock, t0 + IDLE_REFRESH_SECS)
        assert soc_shown() == 50
        run_timers(clock, t0 + 6.0 + IDLE_REFRESH_SECS)
        assert soc_shown() == 51  # still refreshed now and then: a first read is not old
    finally:
        sink.stop()


def test_the_server_starts_without_a_dns_lookup_and_stops_at_once(monkeypatch) -> None:
    """HTTPServer looks its host up (getfqdn): seconds on a Pi booting without a network,
    before the inverter's first frame. And it must not poll to notice a stop."""
    lookups: list[str] = []
    monkeypatch.setattr(socket, "getfqdn", lambda name="": lookups.append(name) or name)
    sink = build(WebSink, {"inputs": ["lynk"], "listen": "127.0.0.1:0"},
                 clock=Clock(virtual=True, start=1745512155.0), start=False)
    sink.start()
    try:
        port = int(sink.listening.rsplit(":", 1)[1].rstrip("/"))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/api/state")
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        sink.stop()
    assert lookups == []
    assert sink._thread is not None and not sink._thread.is_alive()  # stop() waited for it
    server = sink._server
    assert server is not None
    assert [s.fileno() for s in (server.socket, server._wake_r, server._wake_w)] == [-1] * 3
