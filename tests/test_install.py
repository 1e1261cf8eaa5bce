"""install.sh, run for real into a fake root (--root): every file it writes, idempotence,
--dry-run, the broker configs run in a real mosquitto, and the units checked by systemd.

All but one test pass --skip-venv and take a fraction of a second each. The venv test
builds and installs the package into the fake root; pip then fetches the dependencies from
the package index, so it is marked `network` and left out of the default run.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import can
import paho.mqtt.client as mqtt
import pytest
from broker import MOSQUITTO, Mosquitto, free_port
from conftest import REPO
from paho.mqtt.enums import CallbackAPIVersion

INSTALL = REPO / "install.sh"
OVERLAYS = [
    "dtparam=spi=on",
    "dtoverlay=spi1-3cs",
    "dtoverlay=mcp251xfd,spi0-0,interrupt=25",
    "dtoverlay=mcp251xfd,spi1-0,interrupt=24",
]
# As Raspberry Pi OS ships it: SPI commented out, and a model section last.
PI_CONFIG = "# For more options see config.txt(5)\n#dtparam=spi=on\n[cm4]\notg_mode=1\n"
SERVICE = "etc/systemd/system/canbridge.service"
LINK_UNIT = "etc/systemd/system/canbridge-can@.service"
DROPIN = "etc/mosquitto/conf.d/canbridge.conf"
PASSWD = "etc/mosquitto/canbridge.passwd"
SECRET = "etc/canbridge/mqtt-password"
HA_SECRET = "etc/canbridge/homeassistant-mqtt-password"
ACL = "etc/mosquitto/canbridge.acl"
CERT = "etc/mosquitto/certs/canbridge.crt"
PIPELINE = "etc/canbridge/pipeline.toml"
NEEDS_PASSWD = pytest.mark.skipif(not shutil.which("mosquitto_passwd"),
                               reason="mosquitto_passwd (Debian package mosquitto) is missing")


def fake_root(tmp_path: Path, config_txt: str | None = "boot/firmware/config.txt",
              content: str = PI_CONFIG) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/debian_version").write_text("12.11\n")
    if config_txt is not None:
        (root / config_txt).parent.mkdir(parents=True)
        (root / config_txt).write_text(content)
    return root


def install(root: Path, *args: str, venv: bool = False, yes: bool = True,
            expect: int = 0) -> str:
    """Run install.sh into `root`; return its stdout and stderr together."""
    command = ["bash", str(INSTALL), "--root", str(root), *(["--yes"] if yes else []),
               *([] if venv else ["--skip-venv"]), *args]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300, env=env, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == expect, output
    return output


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every path under `root` with its mode and content (a link's target; None for a
    directory)."""
    def content(path: Path) -> bytes | str | None:
        if path.is_symlink():
            return os.readlink(path)
        return None if path.is_dir() else path.read_bytes()
    return {str(path.relative_to(root)): (path.lstat().st_mode, content(path))
            for path in sorted(root.rglob("*"))}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def unit(path: Path) -> dict[str, list[str]]:
    """A systemd unit as "Section.Key" -> every value given, in order."""
    section = ""
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        keys.setdefault(f"{section}.{key}", []).append(value)
    return keys


def config_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return fake_root(tmp_path)


# -- the script itself ------------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck is not installed")
@pytest.mark.parametrize("script", [INSTALL, *sorted((REPO / "scripts").glob("*.sh"))],
                         ids=lambda path: path.name)
def test_shellcheck_finds_nothing(script: Path) -> None:
    done = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True,
                          check=False)
    assert (done.returncode, done.stdout) == (0, "")


def test_help_names_every_option() -> None:
    done = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0
    for option in ("--yes", "--dry-run", "--root DIR", "--skip-venv", "--mqtt-lan",
                   "--mqtt-tls", "--mqtt-password-file FILE", "--mqtt-local", "--no-broker",
                   "--uninstall"):
        assert option in done.stdout


def test_an_unknown_option_is_a_usage_error(root: Path) -> None:
    output = install(root, "--mqtt-lna", expect=2)
    assert "install.sh: unknown option: --mqtt-lna" in output
    assert snapshot(root) == snapshot(fake_root(root.parent / "fresh"))


def test_contradicting_broker_options_stop_before_any_change(root: Path) -> None:
    before = snapshot(root)
    output = install(root, "--no-broker", "--mqtt-lan", expect=1)
    assert "--no-broker cannot be combined with --mqtt-lan" in output
    assert snapshot(root) == before


# -- a first install ----------------------------------------------------------------------


def test_a_first_install_writes_every_file(root: Path) -> None:
    output = install(root)

    service = unit(root / SERVICE)
    expected = {
        "Service.Type": ["notify"],
        "Service.NotifyAccess": ["main"],
        "Service.WatchdogSec": ["30"],
        "Service.Restart": ["on-failure"],
        "Service.User": ["canbridge"],
        "Service.NoNewPrivileges": ["yes"],
        "Service.ProtectSystem": ["strict"],
        "Service.ReadWritePaths": ["/var/lib/canbridge /var/log/canbridge"],
        "Service.RuntimeDirectory": ["canbridge"],
        "Service.CacheDirectory": ["canbridge"],
        "Service.RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6 AF_CAN AF_NETLINK"],
        "Service.ExecStartPre": [
            "/opt/canbridge/venv/bin/canbridge validate /etc/canbridge/pipeline.toml"],
        "Service.ExecStart": ["/opt/canbridge/venv/bin/canbridge run /etc/canbridge/pipeline.toml"],
        "Install.WantedBy": ["multi-user.target"],
    }
    assert {key: service.get(key) for key in expected} == expected
    # The bridge must run with the broker down (Wants, never Requires) and keep the network.
    assert "Service.PrivateNetwork" not in service and "Unit.Requires" not in service
    assert service["Unit.Wants"] == [
        "canbridge-can@can0.service canbridge-can@can1.service mosquitto.service"]
    assert service["Unit.After"][0].split()[:3] == [
        "canbridge-can@can0.service", "canbridge-can@can1.service", "mosquitto.service"]

    link = unit(root / LINK_UNIT)
    assert link["Service.EnvironmentFile"] == ["/etc/canbridge/%i.env"]
    assert link["Service.ExecStart"] == [
        "/sbin/ip link set %i up type can bitrate ${BITRATE} restart-ms 100"]
    assert link["Unit.Before"] == ["canbridge.service"]
    assert link["Unit.BindsTo"] == ["sys-subsystem-net-devices-%i.device"]
    assert config_lines(root / "etc/canbridge/can0.env") == ["BITRATE=250000"]
    assert config_lines(root / "etc/canbridge/can1.env") == ["BITRATE=500000"]

    assert (root / PIPELINE).read_bytes() == (REPO / "examples/pipeline.toml").read_bytes()
    assert mode(root / "var/lib/canbridge") == 0o750
    assert mode(root / "var/log/canbridge") == 0o750  # data logs: the service group only
    assert mode(root / SERVICE) == 0o644
    assert os.readlink(root / "usr/local/bin/canbridge") == "/opt/canbridge/venv/bin/canbridge"

    # Localhost only, by default: no password needed, none created.
    assert config_lines(root / DROPIN) == ["listener 1883 127.0.0.1", "allow_anonymous true"]
    assert not (root / SECRET).exists() and not (root / PASSWD).exists()

    # In a fake root nothing touches the real system.
    for command in ("useradd canbridge", "systemctl daemon-reload",
                    "systemctl enable canbridge.service",
                    "systemctl enable canbridge-can@can0.service",
                    "systemctl restart mosquitto.service"):
        assert f"skipped under --root: {command}" in output
    assert "would make sure these are installed: can-utils python3-venv mosquitto " \
           "mosquitto-clients" in output


def test_overlays_are_added_once_after_a_backup(root: Path) -> None:
    config = root / "boot/firmware/config.txt"
    output = install(root)
    text = config.read_text()
    assert text.startswith(PI_CONFIG)
    # After [all]: appended to the [cm4] section they would apply to a CM4 only.
    assert text[len(PI_CONFIG):] == ("\n[all]\n# Two-channel MCP2518FD CAN HAT for canbridge "
                                     "(added by install.sh)\n" + "\n".join(OVERLAYS) + "\n")
    backups = list(config.parent.glob("config.txt.canbridge-*.bak"))
    assert [b.read_text() for b in backups] == [PI_CONFIG]
    assert "REBOOT NEEDED" in output and "then run ./install.sh again" in output
    assert "not started now: the CAN HAT needs a reboot first" in output

    output = install(root)
    assert config.read_text() == text
    assert len(list(config.parent.glob("config.txt.canbridge-*.bak"))) == 1
    assert "REBOOT NEEDED" not in output


def test_only_missing_overlays_are_added_and_old_pi_os_boot_config_is_used(
        tmp_path: Path) -> None:
    present = "dtparam=spi=on\n  dtoverlay=spi1-3cs  \n#dtoverlay=mcp251xfd,spi0-0,interrupt=25\n"
    root = fake_root(tmp_path, "boot/config.txt", present)
    install(root)
    added = (root / "boot/config.txt").read_text()[len(present):].splitlines()
    assert [line for line in added if line and not line.startswith(("#", "["))] == OVERLAYS[2:]


def test_without_a_config_txt_the_overlays_are_skipped(tmp_path: Path) -> None:
    root = fake_root(tmp_path, config_txt=None)
    output = install(root)
    assert "not a Raspberry Pi? skipped" in output
    assert (root / SERVICE).exists() and not (root / "boot").exists()
    assert "REBOOT NEEDED" not in output


def test_a_canbridge_command_that_is_not_ours_is_left_alone(root: Path) -> None:
    mine = root / "usr/local/bin/canbridge"
    mine.parent.mkdir(parents=True)
    mine.write_text("#!/bin/sh\n")
    output = install(root)
    assert mine.read_text() == "#!/bin/sh\n"
    assert "left alone: /usr/local/bin/canbridge is not ours" in output
    install(root, "--uninstall")
    assert mine.read_text() == "#!/bin/sh\n"


# -- running again --------------------------------------------------------------------------


def test_a_second_run_changes_nothing_and_keeps_the_users_files(root: Path) -> None:
    install(root)
    (root / PIPELINE).write_text('[pipeline]\nname = "mine"\n')
    (root / "etc/canbridge/can0.env").write_text("BITRATE=125000\n")
    (root / "var/lib/canbridge/balancing.toml").write_text("last = 1\n")
    before = snapshot(root)

    output = install(root)

    assert snapshot(root) == before
    assert "no changes: everything was installed already" in output
    assert "kept /etc/canbridge/pipeline.toml (yours: never overwritten)" in output


def test_a_rerun_after_an_upgrade_rewrites_the_units_it_owns(root: Path) -> None:
    install(root)
    (root / SERVICE).write_text("[Service]\nExecStart=/old\n")
    output = install(root)
    assert (root / SERVICE).read_bytes() == (REPO / "systemd/canbridge.service").read_bytes()
    assert "wrote /etc/systemd/system/canbridge.service" in output
    assert "skipped under --root: systemctl daemon-reload" in output
    assert "1 change(s)" in output


# -- dry run --------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [(), ("--mqtt-lan",)])
def test_dry_run_changes_nothing_and_prints_every_action(tmp_path: Path,
                                                        extra: tuple[str, ...]) -> None:
    root = fake_root(tmp_path)
    before = snapshot(root)
    output = install(root, "--dry-run", *extra, venv=True, yes=False)
    assert snapshot(root) == before
    for action in ("would add to /boot/firmware/config.txt (after a backup): " + " ".join(OVERLAYS),
                   "would create /etc/systemd/system/canbridge.service",
                   "would create /etc/systemd/system/canbridge-can@.service",
                   "would create /etc/canbridge/can0.env", "would create /etc/canbridge/can1.env",
                   "would create /etc/canbridge/pipeline.toml",
                   "would create /var/lib/canbridge (mode 0750, owner canbridge:canbridge)",
                   "would create /var/log/canbridge (mode 0750, owner canbridge:canbridge)",
                   f"would run: python3 -m venv {root}/opt/canbridge/venv",
                   f"would run: {root}/opt/canbridge/venv/bin/pip install --quiet --upgrade",
                   "would create /etc/mosquitto/conf.d/canbridge.conf",
                   "would link /usr/local/bin/canbridge to /opt/canbridge/venv/bin/canbridge"):
        assert action in output
    assert ("would run: mosquitto_passwd -c /etc/mosquitto/canbridge.passwd canbridge" in output
            ) == bool(extra)
    assert "action(s) would be taken; nothing was changed" in output
    assert "generated password" not in output


def test_dry_run_of_an_installed_root_has_nothing_to_do(root: Path) -> None:
    install(root)
    before = snapshot(root)
    output = install(root, "--dry-run")
    assert snapshot(root) == before
    assert "would " not in output.replace("would make sure", "")
    assert "no changes: everything was installed already" in output


# -- the broker -----------------------------------------------------------------------------


@NEEDS_PASSWD
def test_mqtt_lan_has_a_password_and_no_anonymous_access(root: Path) -> None:
    output = install(root, "--mqtt-lan")

    assert config_lines(root / DROPIN) == [
        "listener 1883", "allow_anonymous false",
        "password_file /etc/mosquitto/canbridge.passwd", "acl_file /etc/mosquitto/canbridge.acl"]
    password = (root / SECRET).read_text().splitlines()[0]
    assert len(password) == 24 and re.fullmatch(r"[A-Za-z0-9_-]+", password)
    ha_password = (root / HA_SECRET).read_text().splitlines()[0]
    assert len(ha_password) == 24 and ha_password != password
    assert mode(root / SECRET) == 0o640 and mode(root / PASSWD) == 0o600
    assert mode(root / HA_SECRET) == 0o600
    users = [line.split(":")[0] for line in (root / PASSWD).read_text().splitlines()]
    assert users == ["canbridge", "homeassistant"]
    assert "$7$" in (root / PASSWD).read_text()
    assert password not in (root / PASSWD).read_text()
    # Home Assistant's own account, printed once; canbridge's own is never shown.
    assert output.count(ha_password) == 1 and "shown only this once" in output
    assert password not in output
    # Home Assistant may read, and announce itself; no commands while controls are off.
    assert config_lines(root / ACL) == [
        "user canbridge", "topic readwrite #", "user homeassistant", "topic read #",
        "topic write homeassistant/status"]

    # The freshly installed pipeline's mqtt sink logs in with it.
    mqtt_sink = tomllib.loads((root / PIPELINE).read_text())["sinks"]["mqtt"]
    assert mqtt_sink["username"] == "canbridge"
    assert mqtt_sink["password_file"] == "/etc/canbridge/mqtt-password"
    assert "# username" not in (root / PIPELINE).read_text()

    before = snapshot(root)
    output = install(root)
    assert snapshot(root) == before, "a rerun without --mqtt-lan must keep the LAN listener"
    assert password not in output and "keeping the LAN listener" in output

    install(root, "--mqtt-local")
    assert config_lines(root / DROPIN) == ["listener 1883 127.0.0.1", "allow_anonymous true"]


@NEEDS_PASSWD
def test_home_assistant_may_send_commands_only_when_the_pipeline_takes_them(root: Path) -> None:
    install(root, "--mqtt-lan")
    pipeline = root / PIPELINE
    pipeline.write_text(pipeline.read_text().replace(
        "[sinks.mqtt]\n", '[sinks.mqtt]\ncontrol = true\ntopic_prefix = "home"\n', 1))
    install(root)
    assert config_lines(root / ACL)[-2:] == ["topic write homeassistant/status",
                                             "topic write home/+/set/#"]


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is not installed")
@NEEDS_PASSWD
def test_mqtt_tls_makes_a_certificate_once_and_keeps_plain_mqtt_on_this_machine(
        root: Path) -> None:
    output = install(root, "--mqtt-tls")
    assert config_lines(root / DROPIN) == [
        "allow_anonymous false", "password_file /etc/mosquitto/canbridge.passwd",
        "acl_file /etc/mosquitto/canbridge.acl", "listener 1883 127.0.0.1", "listener 8883",
        "certfile /etc/mosquitto/certs/canbridge.crt",
        "keyfile /etc/mosquitto/certs/canbridge.key"]
    assert "made a self-signed certificate /etc/mosquitto/certs/canbridge.crt" in output
    assert "port 8883, TLS with /etc/mosquitto/certs/canbridge.crt" in output
    assert mode(root / "etc/mosquitto/certs/canbridge.key") == 0o640
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(root / CERT)],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:localhost" in text
    before = snapshot(root)
    assert "keeping the TLS listener" in install(root)
    assert snapshot(root) == before, "a rerun keeps the certificate Home Assistant trusts"


@NEEDS_PASSWD
def test_mqtt_password_file_sets_that_password_and_an_old_pipeline_is_left_to_the_user(
        root: Path, tmp_path: Path) -> None:
    install(root)
    given = tmp_path / "password"
    given.write_text("correct horse battery\n")

    output = install(root, "--mqtt-password-file", str(given))  # implies --mqtt-lan

    assert config_lines(root / DROPIN)[:2] == ["listener 1883", "allow_anonymous false"]
    assert (root / SECRET).read_text() == "correct horse battery\n"
    assert "correct horse battery" not in output
    # The pipeline was installed by an earlier run: it is the user's, so only a note.
    assert (root / PIPELINE).read_bytes() == (REPO / "examples/pipeline.toml").read_bytes()
    assert 'Add these two lines to the mqtt sink' in output
    assert 'password_file = "/etc/canbridge/mqtt-password"' in output

    before = snapshot(root)
    install(root, "--mqtt-lan", "--mqtt-password-file", str(given))
    assert snapshot(root) == before


def connack(port: int, credentials: tuple[str, str] | None, ca: Path | None = None) -> str:
    """Connect a real paho client and return the broker's answer ("Success", ...); with
    `ca`, over TLS trusting that certificate."""
    answered = threading.Event()
    result: list[str] = []

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason: object,
                   properties: object) -> None:
        result.append(str(reason))
        answered.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    if credentials:
        client.username_pw_set(*credentials)
    if ca is not None:
        client.tls_set(ca_certs=str(ca))
    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert answered.wait(5), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return result[0]


def delivered(port: int, sender: tuple[str, str], receiver: tuple[str, str], topic: str) -> bool:
    """Whether a message `sender` publishes on `topic` reaches `receiver`, subscribed to
    everything (mosquitto drops a publish its ACL denies without telling the sender)."""
    subscribed, got = threading.Event(), threading.Event()

    def client(credentials: tuple[str, str]) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2)
        c.username_pw_set(*credentials)
        c.connect("127.0.0.1", port)
        c.loop_start()
        return c

    listener = client(receiver)
    listener.on_subscribe = lambda *args: subscribed.set()
    listener.on_message = lambda c, u, msg: got.set() if msg.topic == topic else None
    listener.subscribe("#")
    talker = client(sender)
    try:
        assert subscribed.wait(5), "no SUBACK"
        talker.publish(topic, b"1", qos=1).wait_for_publish(5)
        return got.wait(1.0)
    finally:
        for c in (listener, talker):
            c.disconnect()
            c.loop_stop()


class InstalledBroker(Mosquitto):
    """mosquitto running the installer's drop-in, moved to a free port and into the fake root."""

    def __init__(self, folder: Path, root: Path):
        self.root = root
        super().__init__(folder)

    def _write_config(self) -> None:
        text = (self.root / DROPIN).read_text()
        if "listener 8883" in text:  # --mqtt-tls: the plain port stays on this machine
            self.tls_port = free_port()
            text = text.replace("listener 8883", f"listener {self.tls_port}")
        text = text.replace("listener 1883", f"listener {self.port}")
        text = text.replace(" /etc/", f" {self.root}/etc/")
        text += "persistence false\nlog_dest stderr\nlog_type all\n"
        if os.geteuid() == 0:
            # as root mosquitto would switch to its own user, who cannot read tmp_path
            text += f"user {getpass.getuser()}\n"
        self.config_file.write_text(text)


@pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed")
@NEEDS_PASSWD
@pytest.mark.parametrize("lan", [False, True])
def test_the_broker_configs_run_in_mosquitto(root: Path, tmp_path: Path, lan: bool) -> None:
    install(root, *(["--mqtt-lan"] if lan else []))
    with InstalledBroker(tmp_path / "mosquitto", root) as broker:
        if lan:
            password = (root / SECRET).read_text().strip()
            ha = ("homeassistant", (root / HA_SECRET).read_text().strip())
            assert connack(broker.port, None) == "Not authorized"
            assert connack(broker.port, ("canbridge", "wrong")) == "Not authorized"
            assert connack(broker.port, ("canbridge", password)) == "Success"
            assert connack(broker.port, ha) == "Success"
            # Home Assistant reads what canbridge publishes, and its commands are dropped.
            assert delivered(broker.port, ("canbridge", password), ha, "canbridge/battery/state")
            assert not delivered(broker.port, ha, ("canbridge", password),
                                 "canbridge/battery/set/charge_current_max")
        else:
            assert connack(broker.port, None) == "Success"
            assert f"Opening ipv4 listen socket on port {broker.port}" in broker.log()
            assert "ipv6" not in broker.log()


@pytest.mark.skipif(not Path(MOSQUITTO).exists() or not shutil.which("openssl"),
                    reason="mosquitto or openssl is not installed")
@NEEDS_PASSWD
def test_the_tls_listener_takes_only_tls_with_the_made_certificate(root: Path,
                                                                   tmp_path: Path) -> None:
    install(root, "--mqtt-tls")
    ha = ("homeassistant", (root / HA_SECRET).read_text().strip())
    with InstalledBroker(tmp_path / "mosquitto", root) as broker:
        assert connack(broker.tls_port, ha, ca=root / CERT) == "Success"
        with pytest.raises(AssertionError, match="no CONNACK"):
            connack(broker.tls_port, ha)  # plain MQTT to the TLS port gets no answer


def test_no_broker_leaves_mosquitto_alone(root: Path) -> None:
    output = install(root, "--no-broker")
    assert not (root / "etc/mosquitto").exists()
    assert "would make sure these are installed: can-utils python3-venv\n" in output
    assert "skipped (--no-broker)" in output


# -- stopping with a clear message ------------------------------------------------------------


def test_it_stops_when_not_on_debian(root: Path) -> None:
    (root / "etc/debian_version").unlink()
    before = snapshot(root)
    output = install(root, expect=1)
    assert f"this installer is for Debian / Raspberry Pi OS: {root}/etc/debian_version " \
           "is missing" in output
    assert snapshot(root) == before


def test_without_yes_and_without_a_terminal_it_asks_for_yes(root: Path) -> None:
    before = snapshot(root)
    output = install(root, yes=False, expect=1)
    assert "no terminal to ask on: run with --yes to install or upgrade canbridge" in output
    assert snapshot(root) == before


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"),
                    reason="running as root without setpriv to drop privileges")
def test_a_real_install_needs_root() -> None:
    # Without --root this is the real system: as root, drop to nobody first so that nothing
    # could be changed even if the check failed.
    drop = (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            if os.geteuid() == 0 else [])
    done = subprocess.run([*drop, "bash", str(INSTALL), "--yes"], capture_output=True,
                          text=True, cwd="/", stdin=subprocess.DEVNULL, check=False)
    if "installer is for Debian" in done.stderr:
        pytest.skip("not a Debian system")
    assert done.returncode == 1
    assert "installing needs root: sudo" in done.stderr


def test_a_failing_step_is_named(root: Path) -> None:
    (root / "etc/systemd").write_text("a file where a directory belongs\n")
    output = install(root, expect=1)
    assert 'install.sh: step "CAN links" failed (exit status 1) at: mkdir -p' in output
    assert "run install.sh again: every step is safe to repeat" in output
    assert not (root / "etc/canbridge/pipeline.toml").exists()


# -- uninstall -------------------------------------------------------------------------------


@NEEDS_PASSWD
def test_uninstall_removes_what_it_installed_and_keeps_config_and_state(root: Path) -> None:
    install(root, "--mqtt-lan")
    (root / "opt/canbridge/venv/bin").mkdir(parents=True)
    (root / "var/lib/canbridge/balancing.toml").write_text("last = 1\n")
    kept = {path: (root / path).read_bytes() for path in (
        PIPELINE, SECRET, "etc/canbridge/can0.env", "etc/canbridge/can1.env",
        "var/lib/canbridge/balancing.toml")}

    output = install(root, "--uninstall")

    for gone in (SERVICE, LINK_UNIT, "opt/canbridge", DROPIN, PASSWD, "usr/local/bin/canbridge"):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
    assert {path: (root / path).read_bytes() for path in kept} == kept
    assert (root / "var/log/canbridge").is_dir()
    assert "skipped under --root: systemctl disable --now canbridge.service " \
           "canbridge-can@can0.service canbridge-can@can1.service" in output
    assert "Kept: /etc/canbridge (your pipeline" in output

    assert "already absent" in install(root, "--uninstall")


# -- the whole thing, with the venv --------------------------------------------------------


@pytest.fixture(scope="module")
def full_install(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Every step but the venv, with a stand-in for the venv's `canbridge` command."""
    root = fake_root(tmp_path_factory.mktemp("full"))
    output = install(root)
    command = root / "opt/canbridge/venv/bin/canbridge"
    command.parent.mkdir(parents=True, exist_ok=True)
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    return root, output


@pytest.mark.network
def test_the_package_is_installed_into_the_venv(tmp_path: Path) -> None:
    # pip fetches canbridge's dependencies from the package index: not in the default run
    # (tests stay off the internet); `pytest -m network` runs it.
    root = fake_root(tmp_path)
    output = install(root, venv=True)
    canbridge = root / "opt/canbridge/venv/bin/canbridge"
    done = subprocess.run([str(canbridge), "validate", str(root / PIPELINE)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"installing canbridge from a copy of {REPO}" in output

    output = install(root, venv=True)
    assert "unchanged: canbridge in /opt/canbridge/venv (same sources as installed)" in output
    assert "no changes" in output


@pytest.mark.skipif(not shutil.which("systemd-analyze") or not Path("/lib/systemd/system").is_dir(),
                    reason="systemd-analyze or the system's unit files are missing")
def test_systemd_accepts_the_units(full_install: tuple[Path, str]) -> None:
    root, _ = full_install
    # verify --root resolves every unit and binary inside the fake root: give it the system's
    # own units (sysinit.target, ...) and an `ip`; `canbridge` is the fixture's stand-in.
    units = root / "usr/lib/systemd/system"
    if not units.exists():
        shutil.copytree("/lib/systemd/system", units, symlinks=True)
        (root / "sbin").mkdir()
        (root / "sbin/ip").write_text("#!/bin/sh\n")
        (root / "sbin/ip").chmod(0o755)
    for name in ("canbridge.service", "canbridge-can@can0.service", "canbridge-can@can1.service"):
        done = subprocess.run(["systemd-analyze", "verify", f"--root={root}", name],
                              capture_output=True, text=True, check=False)
        # Warnings (an unknown key, say) leave the exit code at 0: there must be none about
        # our units (the system's own units are not ours to judge).
        ours = [line for line in (done.stdout + done.stderr).splitlines() if "canbridge" in line]
        assert (done.returncode, ours) == (0, []), name


# -- the Home Assistant example ----------------------------------------------------------------

HOMEASSISTANT = REPO / "examples/homeassistant"


def ha_slug(text: str) -> str:
    """How Home Assistant turns a friendly name into an entity id's object id."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def package_entities(node: str) -> set[str]:
    """Entity ids the package defines: MQTT ones on the canbridge device take its name first,
    template ones do not."""
    ids = set()
    section = kind = ""
    for line in (HOMEASSISTANT / "canbridge-package.yaml").read_text().splitlines():
        if re.fullmatch(r"[a-z_]+:", line):
            section = line[:-1]
        elif found := re.fullmatch(r"  (?:- )?(binary_sensor|sensor):", line):
            kind = found[1]
        elif found := re.fullmatch(r' +- name: "(.+)"', line):
            prefix = f"{node} " if section == "mqtt" else ""
            ids.add(f"{kind}.{ha_slug(prefix + found[1])}")
    return ids


def test_the_dashboard_shows_only_entities_that_exist() -> None:
    from canbridge_plugins.mqtt.homeassistant import SIGNALS
    from canbridge_plugins.mqtt.sink import MqttSink

    example = tomllib.loads((REPO / "examples/pipeline.toml").read_text())
    node = example["pipeline"]["name"]
    discovered = {("binary_sensor." if info.binary else "sensor.") + ha_slug(f"{node} {info.label}")
                  for info in SIGNALS.values()}
    added = package_entities(node)
    assert added == {"binary_sensor.battery_bridge_online", "binary_sensor.battery_inverter_alive",
                     "sensor.battery_inverter_safety", "sensor.battery_power"}

    dashboard = (HOMEASSISTANT / "dashboard.yaml").read_text()
    shown = set(re.findall(r"\b(?:binary_)?sensor\.[a-z0-9_]+", dashboard))
    assert shown <= discovered | added, shown - discovered - added
    for wanted in ("sensor.battery_state_of_charge", "sensor.battery_power",
                   "sensor.battery_voltage", "sensor.battery_current",
                   "sensor.battery_temperature", "binary_sensor.battery_cell_balancing",
                   "binary_sensor.battery_inverter_alive"):
        assert wanted in shown

    # The package reads the topics the mqtt sink writes, and the health of the example's
    # Pylontech sink under its table name.
    prefix = next(o.default for o in MqttSink.options if o.name == "topic_prefix")
    package = (HOMEASSISTANT / "canbridge-package.yaml").read_text()
    assert set(re.findall(r"topic: (\S+)", package)) == {f"{prefix}/{node}/state",
                                                         f"{prefix}/{node}/status"}
    pylontech = [name for name, table in example["sinks"].items() if table["type"] == "pylontech"]
    assert set(re.findall(r"health\.get\('(\w+)'", package)) == set(pylontech)
    assert set(re.findall(r'identifiers: \["(\w+)"\]', package)) == {f"canbridge_{node}"}


def test_the_control_card_and_automation_use_the_controls_canbridge_announces() -> None:
    from canbridge_plugins.balancing.hold import BALANCE_NOW
    from canbridge_plugins.control.limits import CONTROLS

    example = tomllib.loads((REPO / "examples/pipeline.toml").read_text())
    node = example["pipeline"]["name"]
    announced = {f"{c.kind}.{ha_slug(f'{node} {c.help}')}" for c in (*CONTROLS, BALANCE_NOW)}
    dashboard = (HOMEASSISTANT / "dashboard.yaml").read_text()
    assert set(re.findall(r"\b(?:number|switch|button)\.[a-z0-9_]+", dashboard)) == announced
    automation = (HOMEASSISTANT / "automation-peak-hours.yaml").read_text()
    topics = re.findall(r"topic: canbridge/(\w+)/set/(\w+)", automation)
    assert topics == [(node, "charge_current_max")]
    assert CONTROLS[0].parse('{"value": 20, "for_minutes": 120}').for_minutes == 120


def test_a_third_can_link_for_a_usb_adapter(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    output = install(root, "--can-link", "can2:500000")
    assert config_lines(root / "etc/canbridge/can2.env") == ["BITRATE=500000"]
    assert config_lines(root / "etc/canbridge/can0.env") == ["BITRATE=250000"]
    assert "skipped under --root: systemctl enable canbridge-can@can2.service" in output
    bad = install(root, "--can-link", "usb0", expect=1)
    assert "--can-link usb0: expected NAME:BITRATE, like can2:500000" in bad


def test_web_lan_opens_the_example_web_page_to_the_lan(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    install(root)
    assert 'listen = "127.0.0.1:8080"' in (root / PIPELINE).read_text()
    output = install(root, "--web-lan")
    assert "the web page of /etc/canbridge/pipeline.toml listens on the LAN (port 8080)" in output
    assert 'listen = "0.0.0.0:8080"' in (root / PIPELINE).read_text()
    assert "the web page is open to the LAN already" in install(root, "--web-lan")


def test_the_package_names_its_device_and_the_dashboard_shows_only_lynk2_alarms() -> None:
    """Without `name`, entities created before discovery are binary_sensor.none_...; the
    dashboard lists no alarm the LYNK II never reports (0x35A fields "not supported")."""
    from canbridge_plugins.discover_lynk2 import DiscoverLynk2

    from canbridge.testing import build, capture

    package = (HOMEASSISTANT / "canbridge-package.yaml").read_text()
    assert package.count('identifiers: ["canbridge_battery"]') == package.count(
        'name: "battery"') == 3
    source = build(DiscoverLynk2, {"bus": "battery"})
    out = capture(source)
    source.on_frame(can.Message(arbitration_id=0x35A, data=bytes.fromhex("ABAAFEAFAAFAFF"),
                                is_extended_id=False))
    reported = {name for name in out[0].values if name.startswith("alarm_")}
    dashboard = (HOMEASSISTANT / "dashboard.yaml").read_text()
    shown = set(re.findall(r"binary_sensor\.battery_(alarm_\w+)", dashboard))
    labels = {"alarm_high_temperature_charge": "alarm_high_temp_charge",
              "alarm_low_temperature_charge": "alarm_low_temp_charge",
              "alarm_high_temperature_discharge": "alarm_high_temp_discharge",
              "alarm_low_temperature_discharge": "alarm_low_temp_discharge"}
    assert {labels.get(name, name) for name in shown} <= reported
    assert not {"alarm_general", "alarm_internal", "alarm_cell_imbalance"} & shown
