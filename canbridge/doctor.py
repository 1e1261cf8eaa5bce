"""`canbridge doctor [PIPELINE]`: commissioning a Pi in one command.

A checklist, one line per check with its mark and, when it fails, the next step: the CAN
links (present, up, bit rate, controller state and modes, error counters, past bus-off
episodes, restart-ms), what each bus hears for a few seconds (the LYNK II, the inverter's
keepalive, nothing, error frames; swapped ports), the MQTT broker, the folders canbridge
writes, the systemd service, and what the inverter would receive now. Exit 0 only when every
check passes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import can

from canbridge.buses import BusHandle
from canbridge.config import PipelineConfig
from canbridge.engine import Engine
from canbridge.locations import location_problem

OK, WARN, FAIL = "ok", "warn", "FAIL"
KEEPALIVE = 0x305
OVERLAY_HINT = ("is the CAN HAT's overlay in /boot/firmware/config.txt? For a Waveshare 2-CH "
                "CAN FD HAT: dtparam=spi=on, dtoverlay=spi1-3cs, "
                "dtoverlay=mcp251xfd,spi0-0,interrupt=25 and "
                "dtoverlay=mcp251xfd,spi1-0,interrupt=24, then reboot (install.sh adds them)")

Runner = Callable[[list[str]], tuple[int, str]]


def run_command(command: list[str]) -> tuple[int, str]:
    if shutil.which(command[0]) is None:
        return 127, f"{command[0]}: not found"
    done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    return done.returncode, done.stdout + done.stderr


@dataclass
class Check:
    mark: str
    what: str
    next_step: str = ""

    def line(self) -> str:
        text = f"{self.mark:>4}  {self.what}"
        return text + (f"\n      -> {self.next_step}" if self.next_step else "")


# -- the CAN links ------------------------------------------------------------------------------


@dataclass
class LinkState:
    exists: bool
    link_type: str | None = "can"
    up: bool = False
    state: str | None = None
    tx_errors: int | None = None
    rx_errors: int | None = None
    restart_ms: int | None = None
    bitrate: int | None = None
    virtual: bool = False
    modes: tuple[str, ...] = ()
    """The controller modes switched on (`ip link set ... type can listen-only on`...)."""
    bus_offs: int = 0
    error_passives: int = 0
    """Episodes the kernel counted since the interface appeared: a link that is fine now may
    have gone bus-off and been restarted (restart-ms) many times."""
    unreadable: str | None = None
    """Why `ip`'s answer could not be read (an iproute2 without JSON output, say)."""


VIRTUAL_KINDS = frozenset({"vcan", "vxcan"})
# What each controller mode means, from the kernel's CAN netlink interface
# (include/uapi/linux/can/netlink.h and the commits that added each flag): a mode that keeps
# frames off the wire fails, one that hides errors or drops frames warns.
MODES = {
    "LISTEN-ONLY": (FAIL, "the controller only listens: it sends nothing and acknowledges "
                          "nothing"),
    "LOOPBACK": (FAIL, "the controller loops its frames back inside itself (the MCP2515 and "
                       "MCP2518FD of the Pi's CAN HATs do): they never reach the wire"),
    "PRESUME-ACK": (WARN, "frames count as sent without an acknowledgement: a node that is off "
                          "or wired wrong goes unnoticed"),
    "ONE-SHOT": (WARN, "a frame that loses arbitration or meets an error is not sent again"),
}

def parse_link(output: str, code: int) -> LinkState:
    """What `ip -details -statistics -json link show CHANNEL` says of a CAN link."""
    if code != 0:
        if "does not exist" in output:
            return LinkState(exists=False)
        return LinkState(exists=True, unreadable=(output.strip().splitlines() or ["?"])[0])
    try:
        link = json.loads(output)[0]
        info = link.get("linkinfo", {})
        data = info.get("info_data", {})
        counters = data.get("berr_counter", {})
        episodes = info.get("info_xstats", {})
        return LinkState(
            exists=True, link_type=link.get("link_type"), up="UP" in link.get("flags", ()),
            state=data.get("state"),
            tx_errors=counters.get("tx"), rx_errors=counters.get("rx"),
            restart_ms=data.get("restart_ms"),
            bitrate=data.get("bittiming", {}).get("bitrate"),
            virtual=info.get("info_kind") in VIRTUAL_KINDS,
            modes=tuple(data.get("ctrlmode", ())), bus_offs=episodes.get("bus_off", 0),
            error_passives=episodes.get("error_passive", 0))
    except (ValueError, LookupError, AttributeError, TypeError):
        return LinkState(exists=True, unreadable=f"not the JSON of `ip -json`: {output[:60]!r}")


def check_link(name: str, bus: dict[str, Any], runner: Runner) -> Check:
    channel = str(bus.get("channel"))
    link = parse_link(*reversed(runner(["ip", "-details", "-statistics", "-json", "link",
                                        "show", channel])))
    label = f"bus {name} ({channel})"
    if not link.exists:
        return Check(FAIL, f"{label}: no such interface", OVERLAY_HINT)
    if link.unreadable is not None:
        return Check(WARN, f"{label}: cannot read what `ip` says of it ({link.unreadable})",
                     "doctor reads `ip -json`, which an up-to-date iproute2 answers "
                     "(sudo apt install iproute2)")
    if link.link_type != "can":
        return Check(FAIL, f"{label}: not a CAN interface (link/{link.link_type})",
                     "the CAN HAT's links are can0 and can1 (`ip -brief link` lists them): "
                     f"set the channel of bus {name} in the pipeline")
    wanted = bus.get("bitrate")
    up_hint = (f"sudo systemctl restart canbridge-can@{channel} (or: sudo ip link set "
               f"{channel} up type can bitrate {wanted or 500000} restart-ms 100)")
    if not link.up:
        return Check(FAIL, f"{label}: down", up_hint)
    if link.virtual:
        return Check(WARN, f"{label}: virtual CAN link, up", "a vcan link reaches no wire: "
                     "right for a test bench, never for a battery or an inverter")
    facts = (f"up, {link.bitrate} bit/s, {link.state}, errors tx {link.tx_errors} rx "
             f"{link.rx_errors}, restart-ms {link.restart_ms}")
    if link.modes:
        facts += f", {' '.join(link.modes).lower()} on"
    if link.bus_offs or link.error_passives:
        facts += f"; counted so far: {link.bus_offs} bus-off, {link.error_passives} error-passive"
    findings = [(mark, f"{meaning}; sudo ip link set {channel} down && sudo ip link set "
                       f"{channel} up type can {mode.lower()} off, and remove it where it was "
                       "set (a systemd-networkd .network file, /etc/network/interfaces)")
                for mode, (mark, meaning) in MODES.items() if mode in link.modes]
    if wanted and link.bitrate and link.bitrate != wanted:
        findings.append((FAIL, f"the pipeline says {wanted} bit/s: set BITRATE={wanted} in "
                               f"/etc/canbridge/{channel}.env and restart "
                               f"canbridge-can@{channel}"))
    if link.state == "BUS-OFF":
        findings.append((FAIL, "bus-off: check CAN-H/CAN-L, the 120 ohm termination at both "
                               "ends (60 ohm between CAN-H and CAN-L, power off) and the bit "
                               "rate of the other side"))
    if link.state in ("ERROR-PASSIVE", "ERROR-WARNING"):
        findings.append((FAIL, "frames are not acknowledged: the other side is off, at another "
                               "bit rate, or the wiring/termination is wrong"))
    # Error-passive alone is what a node that was off leaves (nothing acknowledged); bus-off
    # takes bit errors: wiring, termination or a bit rate that does not match.
    if link.bus_offs:
        findings.append((WARN, "the link went bus-off before, though it is fine now: a loose "
                               "wire, a missing 120 ohm termination or a node at another bit "
                               "rate (counted since the interface appeared)"))
    if not link.restart_ms:
        findings.append((WARN, "restart-ms 0: a bus-off will not recover by itself; "
                               "install.sh sets restart-ms 100"))
    # The first failure, else the first warning, names the next step.
    mark, next_step = min(findings, key=lambda finding: finding[0] != FAIL, default=(OK, ""))
    return Check(mark, f"{label}: {facts}", next_step)


# -- what the buses hear --------------------------------------------------------------------


class _ListeningEngine(Engine):
    """The pipeline in dry run, noting what each bus hears (IDs, error frames)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.heard: dict[str, set[int]] = {}
        self.error_frames: dict[str, int] = {}

    def _dispatch(self, bus: BusHandle, msg: can.Message) -> None:
        if msg.is_error_frame:
            self.error_frames[bus.name] = self.error_frames.get(bus.name, 0) + 1
        else:
            self.heard.setdefault(bus.name, set()).add(msg.arbitration_id)
        super()._dispatch(bus, msg)


def check_traffic(config: PipelineConfig, engine: _ListeningEngine) -> list[Check]:
    """What each bus heard, against what its components expect; swapped ports named."""
    battery_ids: dict[str, frozenset[int]] = {}
    inverter_buses: set[str] = set()
    for spec in config.components:
        bus = spec.values.get("bus")
        if not isinstance(bus, str):
            continue
        read, _ = spec.cls.frame_ids(spec.values)
        if spec.section == "sources" and read:
            battery_ids[bus] = battery_ids.get(bus, frozenset()) | read
        if spec.section == "sinks" and KEEPALIVE in read:
            inverter_buses.add(bus)
    checks = []
    for name in config.buses:
        heard = engine.heard.get(name, set())
        errors = engine.error_frames.get(name, 0)
        shown = ", ".join(f"0x{i:03X}" for i in sorted(heard)[:8]) or "nothing"
        if name in battery_ids:
            if heard & battery_ids[name]:
                checks.append(Check(OK, f"bus {name} hears the battery ({shown})"))
                continue
            elsewhere = [other for other in config.buses if other != name
                         and engine.heard.get(other, set()) & battery_ids[name]]
            if elsewhere:
                checks.append(Check(FAIL, f"bus {name} hears {shown}, and bus {elsewhere[0]} "
                                    "hears the battery", "the ports are swapped: swap the "
                                    "cables or the two buses' channels"))
            else:
                checks.append(Check(FAIL, f"bus {name} hears {shown}"
                                    f"{f' and {errors} error frames' if errors else ''}, not "
                                    "the battery", _silence_hint(errors)))
        elif name in inverter_buses:
            if KEEPALIVE in heard:
                checks.append(Check(OK, f"bus {name} hears the inverter's 0x305 keepalive"))
            elif any(heard & ids for ids in battery_ids.values()):
                checks.append(Check(FAIL, f"bus {name} hears the battery ({shown})",
                                    "the ports are swapped: swap the cables or the two buses' "
                                    "channels"))
            else:
                checks.append(Check(WARN, f"bus {name} hears {shown}, no 0x305 keepalive",
                                    "some inverters never send it; otherwise: is the inverter "
                                    "on, its battery type set to Pylontech, the cable in its "
                                    "BMS port? " + _silence_hint(errors)))
    return checks


def _silence_hint(errors: int) -> str:
    if errors:
        return ("error frames: a bit rate mismatch (LYNK II 250000, Pylontech inverters "
                "500000) or wiring/termination")
    return "nothing at all: is the other side on, the cable in, CAN-H to CAN-H and CAN-L to CAN-L?"


def check_inverter_view(engine: Engine) -> list[Check]:
    """What each inverter sink would send now, decoded (the pipeline ran in dry run)."""
    checks = []
    health = engine.health()
    values: dict[str, Any] = {}
    for component in engine.components.values():
        latest = getattr(getattr(component, "model", None), "latest", None)
        if latest is not None:
            values = latest.snapshot()
    for name, status in health.items():
        if "sent" not in status:
            continue
        sent = status["sent"]
        if sent is None:
            checks.append(Check(FAIL, f"inverter sink {name}: nothing to send yet "
                                f"({status['safety']})", "no complete battery data heard"))
            continue
        soc = values.get("soc_reported", values.get("soc"))
        text = (f"inverter sink {name} would send: SOC {soc} %, "
                f"{values.get('voltage')} V, {values.get('current')} A, CVL "
                f"{sent['charge_voltage_limit']:g} V, CCL {sent['charge_current_limit']:g} A, "
                f"DCL {sent['discharge_current_limit']:g} A, DVL "
                f"{sent['discharge_voltage_limit']:g} V, charge "
                f"{'on' if sent['charge_enable'] else 'off'}, discharge "
                f"{'on' if sent['discharge_enable'] else 'off'} ({status['safety']})")
        checks.append(Check(OK if status["safety"] == "normal" else WARN, text))
    return checks


# -- MQTT, folders, the service -------------------------------------------------------------


def check_mqtt(config: PipelineConfig, timeout: float = 5.0) -> list[Check]:
    checks = []
    for spec in config.components:
        if spec.cls.type_name != "mqtt":
            continue
        checks.append(_try_broker(spec.name, spec.values, config.folder, timeout))
    return checks


def _try_broker(name: str, values: dict[str, Any], folder: Path, timeout: float) -> Check:
    import paho.mqtt.client as mqtt

    address = f"{values['host']}:{values['port']}"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"canbridge-doctor-{name}")
    if values.get("username"):
        password = values.get("password")
        if values.get("password_file"):
            try:
                lines = (folder / values["password_file"]).read_text().splitlines()
            except OSError as exc:
                return Check(FAIL, f"mqtt {name}: cannot read {values['password_file']}",
                             str(exc))
            password = lines[0] if lines else ""
        client.username_pw_set(values["username"], password)
    result: dict[str, Any] = {}
    done = threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        result["reason"] = reason
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(values["host"], values["port"], keepalive=10)
    except OSError as exc:
        return Check(FAIL, f"mqtt {name}: broker {address} unreachable ({exc.strerror or exc})",
                     "is mosquitto running (systemctl status mosquitto), the host and port "
                     "right?")
    client.loop_start()
    answered = done.wait(timeout)
    client.disconnect()
    client.loop_stop()
    if not answered:
        return Check(FAIL, f"mqtt {name}: broker {address} did not answer in {timeout:g} s")
    reason = result["reason"]
    if reason.is_failure:
        return Check(FAIL, f"mqtt {name}: broker {address} refused: {reason}",
                     "check username and password_file (install.sh --mqtt-lan prints the "
                     "password once; it is kept in /etc/canbridge/mqtt-password)")
    return Check(OK, f"mqtt {name}: broker {address} accepts canbridge")


def check_folders(config: PipelineConfig) -> list[Check]:
    checks = []
    seen: set[str] = set()
    tables = [("", values, options) for values, options in _core_written(config)]
    tables += [(spec.name, spec.values, spec.cls.schema()) for spec in config.components]
    for owner, values, options in tables:
        for option in options:
            path = values.get(option.name)
            if not option.written or not isinstance(path, str) or path in seen:
                continue
            seen.add(path)
            problem = location_problem(Path(path))
            label = f"{owner + ' ' if owner else ''}{option.name} {path}"
            checks.append(Check(OK, f"writable: {label}") if problem is None else
                          Check(FAIL, f"not writable: {label}: {problem}",
                                "run install.sh again (it makes /var/lib/canbridge and "
                                "/var/log/canbridge for the canbridge user), or change the path"))
    return checks


def _core_written(config: PipelineConfig) -> Iterable[tuple[dict[str, Any], Any]]:
    from canbridge.config import BUS_OPTIONS, core_tables

    for name, options in core_tables().items():
        yield config.tables[name], options
    for values in config.buses.values():
        yield values, BUS_OPTIONS


def check_service(runner: Runner) -> list[Check]:
    code, output = runner(["systemctl", "show", "canbridge.service", "-p", "LoadState",
                           "-p", "UnitFileState", "-p", "ActiveState", "-p", "ExecMainStatus"])
    if code == 127:
        return [Check(WARN, "systemd: no systemctl here (not a Pi with the service?)")]
    props = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    if props.get("LoadState") != "loaded":
        return [Check(WARN, "service canbridge.service is not installed",
                      "sudo ./install.sh installs it")]
    checks = []
    if props.get("UnitFileState") != "enabled":
        checks.append(Check(FAIL, "service canbridge.service is not enabled",
                            "sudo systemctl enable --now canbridge"))
    active = props.get("ActiveState")
    status = props.get("ExecMainStatus", "0")
    if active == "active":
        checks.append(Check(OK, "service canbridge.service is running"))
    else:
        checks.append(Check(FAIL, f"service canbridge.service is {active} (last exit {status})",
                            "journalctl -u canbridge -n 50 says why"))
    return checks


# -- the whole checklist --------------------------------------------------------------------


def doctor(config: PipelineConfig, out: TextIO, *, listen_secs: float = 3.0,
           runner: Runner = run_command) -> int:
    checks: list[Check] = [Check(OK, f"pipeline {config.path} is valid")]
    for name, bus in config.buses.items():
        if bus["interface"] == "socketcan":
            checks.append(check_link(name, bus, runner))
    print("\n".join(check.line() for check in checks), file=out, flush=True)
    print(f"      listening {listen_secs:g} s on every bus (the pipeline in dry run)...",
          file=out, flush=True)
    engine = _ListeningEngine(config, dry_run=True, duration=listen_secs)
    engine.run()
    later = [*check_traffic(config, engine), *check_inverter_view(engine),
             *check_mqtt(config), *check_folders(config), *check_service(runner)]
    print("\n".join(check.line() for check in later), file=out)
    failed = sum(check.mark == FAIL for check in [*checks, *later])
    print(f"\n{failed} check{'s' if failed != 1 else ''} failed" if failed else
          "\nevery check passed", file=out)
    return 1 if failed else 0
