"""Sink `web`: a read-only page at http://PI:8080 with the bridge at a glance.

The standard library's HTTP server runs on threads of the sink's own, so a slow, stuck or
malicious browser never waits the engine thread. The engine thread only refreshes a
snapshot once a second (the status document, the latest values) and a chart point once a
minute; the server threads read those. Bounded: `max_clients` at a time (more get 503),
small requests only (no request body at all), every answer with a Content-Security-Policy
and nosniff, a socket timeout so a client that never reads is dropped.
"""

from __future__ import annotations

import json
import math
import selectors
import socket
import socketserver
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path as FilePath
from typing import Any

from canbridge import (
    Context,
    Integer,
    Option,
    OptionError,
    Path,
    Sink,
    Text,
    Timer,
)
from canbridge.clock import SIDE_SLACK_SECS
from canbridge.logs import recent_events

from .history import History

LOOPBACK = ("127.0.0.1", "localhost", "::1")
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MAX_REQUEST_LINE = 2048
CLIENT_TIMEOUT_SECS = 5.0
IDLE_REFRESH_SECS = 30.0


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (port 0: any free one)")
    return host.strip("[]"), int(port)


class WebSink(Sink):
    """Serves the page and its JSON from a snapshot the engine thread refreshes."""

    type_name = "web"
    summary = "a read-only local web page: live values, limits, safety, buses, 24 h charts"
    options = (
        Option("listen", Text(non_empty=True), "127.0.0.1:8080",
               "HOST:PORT to serve on; beyond 127.0.0.1 anyone on the network can read the "
               "page (read-only)"),
        Option("history_file", Path(), None,
               "the data log's path (as in its table): today's rows fill the charts at "
               "start-up"),
        Option("max_clients", Integer(min=1, max=64), 8,
               "requests served at once; more get 503"),
    )

    @classmethod
    def check(cls, config: Mapping[str, Any]) -> Iterable[tuple[str, str] | OptionError]:
        try:
            host, _ = parse_listen(config["listen"])
        except ValueError as exc:
            yield "listen", str(exc)
            return
        if host not in LOOPBACK:
            yield OptionError("listen", f"serves on {host}: the page (battery state, no "
                              "controls) is readable from the network; the installer's "
                              "--web-lan makes this choice", warning=True)

    def __init__(self, name: str, config: Mapping[str, Any], context: Context):
        super().__init__(name, config, context)
        self.latest = context.latest
        self.history = History()
        self.state_json = b"{}"
        self.requests = 0
        self.state_reads = 0
        self._built_for = -1
        self._built_at = 0.0
        self.refused = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timers: list[Timer] = []
        self.listening: str | None = None

    # -- engine thread ------------------------------------------------------------------

    def start(self) -> None:
        host, port = parse_listen(self.config["listen"])
        try:
            self._server = _Server((host, port), self)
        except OSError as exc:
            self.errors += 1
            self.log.error("%s: cannot serve on %s: %s (the bridge goes on without the page)",
                           self.name, self.config["listen"], exc.strerror or exc)
            return
        self.listening = f"http://{host}:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._serve, name=f"web-{self.name}",
                                        daemon=True)
        self._thread.start()
        self.log.info("%s: the page is at %s", self.name, self.listening)
        self._refresh()
        self._timers = [self.clock.every(1.0, self._refresh, slack=SIDE_SLACK_SECS),
                        self.clock.every(60.0, self._chart_point, slack=SIDE_SLACK_SECS)]

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._server is not None:
            self._server.wake()
            if self._thread is not None:
                self._thread.join()
            self._server.server_close()

    def _refresh(self) -> None:
        """The snapshot the page reads: at most once a second, whatever the browsers do;
        once every IDLE_REFRESH_SECS while nobody reads it (a day replayed at full speed
        would otherwise spend a fifth of its time on snapshots nobody sees)."""
        now = self.clock.now()
        if self.state_reads == self._built_for and now - self._built_at < IDLE_REFRESH_SECS:
            return
        self._built_for, self._built_at = self.state_reads, now
        self.state_json = json.dumps(self.state(), default=str,
                                     separators=(",", ":")).encode()
        if not self.history.points:
            self._chart_point()  # a first point at once: the charts never wait a minute

    def _chart_point(self) -> None:
        if len(self.latest):
            self.history.add(self.clock.wall_time(), self.latest.snapshot())

    def state(self) -> dict[str, Any]:
        """The page's one source: the status document `canbridge status` reads, and the
        latest battery values with the power worked out."""
        values = {k: v for k, v in self.latest.snapshot().items()
                  if not (isinstance(v, float) and not math.isfinite(v))}
        voltage, current = values.get("voltage"), values.get("current")
        if isinstance(voltage, int | float) and isinstance(current, int | float):
            values["power"] = round(voltage * current, 1)
        return {"time": self.clock.wall_time(), "values": values,
                "status": self.context.pipeline_status()}

    # -- server thread ------------------------------------------------------------------

    def _serve(self) -> None:
        path = self.config["history_file"]
        if path:
            count = self.history.refill(FilePath(path), datetime.now().astimezone())
            self.log.info("%s: %d chart points from %s", self.name, count, path)
        assert self._server is not None
        self._server.serve_until_woken()

    def status(self) -> dict[str, Any]:
        return {"state": "ok" if self.listening else "error", "errors": self.errors,
                "listening": self.listening, "frames_out": self.requests,
                "refused": self.refused, "chart_points": len(self.history.points)}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sink: WebSink):
        self.sink = sink
        self.slots = threading.BoundedSemaphore(sink.config["max_clients"])
        self._wake_r, self._wake_w = socket.socketpair()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """HTTPServer's own would look the host up in DNS (`getfqdn`): seconds on a Pi that
        boots without a network, before the inverter's first frame."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def serve_until_woken(self) -> None:
        """Serve until `wake()`, asleep between requests (serve_forever polls twice a
        second: wake-ups an idle Pi does not need)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is self._wake_r for key, _ in ready):
                    return
                self.handle_request()

    def wake(self) -> None:
        self._wake_w.send(b"\0")

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = CLIENT_TIMEOUT_SECS  # a client that stops reading is dropped
    server_version = "canbridge"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """No line per request: the operator log is for events."""

    def handle_one_request(self) -> None:
        if not self.server.slots.acquire(blocking=False):
            self.server.sink.refused += 1
            self.rfile.readline(MAX_REQUEST_LINE + 1)  # read, so the answer is not a reset
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "busy: too many clients")
            self.close_connection = True
            return
        try:
            super().handle_one_request()
        finally:
            self.server.slots.release()

    def parse_request(self) -> bool:
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self._refuse(HTTPStatus.REQUEST_URI_TOO_LONG)
            return False
        if not super().parse_request():
            return False
        if self.headers.get("Content-Length", "0") not in ("", "0") or self.headers.get(
                "Transfer-Encoding"):
            self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "this page takes no data")
            return False
        return True

    def _refuse(self, status: HTTPStatus, message: str | None = None) -> None:
        """An error answer to a request not parsed: send_error needs these three set."""
        self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
        self.send_error(status, message)

    def do_GET(self) -> None:
        sink = self.server.sink
        sink.requests += 1
        path = self.path.split("?", 1)[0]
        if path in STATIC:
            name, kind = STATIC[path]
            self._send(resources.files(__package__).joinpath("static", name).read_bytes(),
                       kind)
        elif path == "/api/state":
            sink.state_reads += 1
            self._send(sink.state_json, "application/json")
        elif path == "/api/history":
            self._send(json.dumps(sink.history.document()).encode(), "application/json")
        elif path == "/api/events":
            self._send(json.dumps(recent_events()).encode(), "application/json")
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def do_HEAD(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED)

    do_POST = do_PUT = do_DELETE = do_HEAD

    def end_headers(self) -> None:
        for header, value in SECURITY_HEADERS.items():
            self.send_header(header, value)
        super().end_headers()

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)
