"""The command line as a user meets it: subprocesses, exit codes, messages, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import (
    LYNK_TO_PYLONTECH,
    REPO,
    SAMPLE,
    canbridge_cmd,
    run_canbridge,
    subprocess_env,
    write_capture,
)

T0 = 1745512155.0

PIPELINE = """\
[buses.battery]
interface = "replay"
path = "{capture}"
speed = {speed}
loop = {loop}

[buses.inverter]
interface = "virtual"
channel = "{channel}"
record = "inverter.log"

[sources.frames]
type = "test-frames"
bus = "battery"

[sinks.out]
type = "test-send"
inputs = ["frames"]
bus = "inverter"

[status]
file = "status.json"
"""


def pipeline(tmp_path: Path, channel: str, *, speed: str = '"max"', loop: str = "false",
             frames: int = 5, step: float = 1.0) -> Path:
    capture = write_capture(tmp_path / "c.log",
                            [(T0 + i * step, 0x20, bytes([i])) for i in range(frames)])
    path = tmp_path / "pipeline.toml"
    path.write_text(PIPELINE.format(capture=capture, speed=speed, loop=loop, channel=channel))
    return path


def test_a_replay_run_ends_by_itself_with_exit_0(tmp_path: Path, channel: str) -> None:
    path = pipeline(tmp_path, channel)
    result = run_canbridge("run", str(path))
    assert result.returncode == 0, result.stderr
    assert "stopped: 5 frames in, 5 updates, 0 component errors" in result.stderr
    assert len((tmp_path / "inverter.log").read_text().splitlines()) == 5
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "stopped"


def test_a_real_time_replay_ends_when_the_capture_does(tmp_path: Path, channel: str) -> None:
    path = pipeline(tmp_path, channel, speed="1.0", frames=4, step=0.1)
    result = run_canbridge("run", str(path))
    assert result.returncode == 0, result.stderr
    assert "every replay has ended" in result.stderr
    recorded = (tmp_path / "inverter.log").read_text().splitlines()
    assert [line.split()[2] for line in recorded] == ["120#01", "120#02", "120#03", "120#04"]
    # A live record carries Unix time, so it lines up with other logs.
    stamps = [float(line.split()[0].strip("()")) for line in recorded]
    assert all(abs(ts - time.time()) < 60 for ts in stamps)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_stops_a_running_pipeline_cleanly(tmp_path: Path, channel: str,
                                                            signum: int) -> None:
    path = pipeline(tmp_path, channel, speed="1.0", loop="true", frames=3, step=0.2)
    proc = subprocess.Popen(canbridge_cmd("run", str(path)), env=subprocess_env(),
                            stderr=subprocess.PIPE, text=True)
    status = tmp_path / "status.json"
    deadline = time.monotonic() + 20
    while not status.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status.exists(), "the pipeline never wrote its status file"
    proc.send_signal(signum)
    sent = time.monotonic()
    _, stderr = proc.communicate(timeout=10)
    assert time.monotonic() - sent < 2.0
    assert proc.returncode == 0, stderr
    assert f"{signal.Signals(signum).name} received: stopping" in stderr
    assert json.loads(status.read_text())["state"] == "stopped"


def test_duration_ends_a_live_run(tmp_path: Path, channel: str) -> None:
    path = pipeline(tmp_path, channel, speed="1.0", loop="true", frames=2, step=0.1)
    result = run_canbridge("run", str(path), "--duration", "0.5")
    assert result.returncode == 0, result.stderr


def test_a_bad_pipeline_exits_2_without_a_traceback(tmp_path: Path, channel: str) -> None:
    path = pipeline(tmp_path, channel)
    path.write_text(path.read_text().replace('type = "test-send"', 'type = "test-sendd"'))
    result = run_canbridge("run", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f'{path}:17: sinks.out.type: unknown sink type "test-sendd" (did you mean ' \
           '"test-send"?)' in result.stderr.splitlines()


def test_dry_run_records_nothing_sent(tmp_path: Path, channel: str) -> None:
    path = pipeline(tmp_path, channel)
    result = run_canbridge("run", str(path), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing is transmitted" in result.stderr
    assert (tmp_path / "inverter.log").read_text() == ""


def make_broken_plugin(root: Path) -> Path:
    """An installed distribution whose `canbridge.plugins` entry point fails to import."""
    dist = root / "broken_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[canbridge.plugins]\nbroken = broken_plugin_mod\n")
    (root / "broken_plugin_mod.py").write_text("raise RuntimeError('this plugin is broken')\n")
    return root


def test_a_plugin_that_fails_to_import_is_skipped_and_the_rest_load(
        tmp_path: Path, channel: str) -> None:
    site = make_broken_plugin(tmp_path / "site")
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    listing = subprocess.run(canbridge_cmd("plugins"), env=env, text=True, capture_output=True,
                             check=False)
    assert listing.returncode == 1
    assert ("broken (broken_plugin_mod) BROKEN: failed to import: "
            "RuntimeError('this plugin is broken')") in listing.stdout
    assert "console (canbridge_plugins.console" in listing.stdout
    assert "  sink 'console': print a compact live table" in listing.stdout
    assert "    every_secs = 2  (number, >= 0.1, <= 3600) seconds between refreshes" in (
        listing.stdout)

    path = pipeline(tmp_path, channel)
    run = subprocess.run(canbridge_cmd("run", str(path)), env=env, text=True,
                         capture_output=True, check=False)
    assert run.returncode == 0
    assert "plugin 'broken' (broken_plugin_mod) skipped: failed to import" in run.stderr


def test_built_in_plugins_register_through_entry_points() -> None:
    metadata = (REPO / "pyproject.toml").read_text()
    assert '[project.entry-points."canbridge.plugins"]' in metadata
    result = run_canbridge("plugins")
    assert "console (canbridge_plugins.console" in result.stdout


def test_plugins_lists_the_inverter_profiles() -> None:
    result = run_canbridge("plugins")
    assert result.returncode == 0, result.stderr
    assert ("  sol-ark: Sol-Ark (low-voltage models); every frame 8 data bytes; 0x356 pack "
            "voltage in 0.1 V (sets pad_to_8_bytes = True, voltage_resolution = 0.1)"
            ) in result.stdout.splitlines()
    assert "    inverter = \"generic\"  (one of \"generic\", \"deye\"," in result.stdout


def test_dbc_lists_and_shows_the_shipped_databases() -> None:
    listing = run_canbridge("dbc")
    assert listing.returncode == 0, listing.stderr
    names = [line.split(":")[0] for line in listing.stdout.splitlines()]
    assert {"discover_lynk2", "pylontech"} <= set(names)
    shown = run_canbridge("dbc", "show", "pylontech")
    assert shown.returncode == 0
    assert "0x351" in shown.stdout
    missing = run_canbridge("dbc", "show", "pylontek")
    assert missing.returncode == 2
    assert 'no DBC named \'pylontek\' (did you mean "pylontech"?)' in missing.stderr


# -- every bad input: one line naming the file, and the exit code ------------------------------


@pytest.mark.parametrize(("content", "message"), [
    ('[buses.b]\ninterface = "virtual"\n'.encode("utf-16"),
     "file: is UTF-16 text (Windows Notepad's \"Unicode\"?): save it as UTF-8"),
    (b'[buses.b]\ninterface = "virtual"\nchannel = "caf\xe9"\n',
     "file: is not UTF-8 text (byte 0xE9 on line 3): save it as UTF-8"),
])
def test_a_pipeline_that_is_not_utf8_is_one_line(tmp_path: Path, content: bytes,
                                                 message: str) -> None:
    path = tmp_path / "p.toml"
    path.write_bytes(content)
    result = run_canbridge("validate", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == f"{path}: {message}"
    assert "Traceback" not in result.stderr


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path, channel: str) -> None:
    path = tmp_path / "p.toml"
    path.write_bytes(b"\xef\xbb\xbf" + pipeline(tmp_path, channel).read_bytes())
    assert run_canbridge("validate", str(path)).returncode == 0


@pytest.mark.parametrize(("name", "content", "message"), [
    ("empty.log", "", "the capture holds no frames"),
    ("garbage.log", "this is not a capture\n\x00\x01\x02\n", "not a readable capture at its "
                                                           "start"),
    ("capture.xyz", "(1.0) can0 351#00\n", "not a readable capture at its start"),
])
def test_a_bad_capture_is_named_by_validate(tmp_path: Path, name: str, content: str,
                                            message: str) -> None:
    capture = tmp_path / name
    capture.write_text(content)
    path = tmp_path / "p.toml"
    path.write_text(f'[buses.b]\ninterface = "replay"\npath = "{capture}"\n')
    result = run_canbridge("validate", str(path))
    assert result.returncode == 2
    assert f"buses.b.path: {capture}: {message}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_capture_that_breaks_mid_run_stops_it_with_exit_2_naming_the_file(
        tmp_path: Path) -> None:
    capture = tmp_path / "cut.log"
    good = "".join(f"({T0 + i}) can0 351#2F02040B040BB001\n" for i in range(30))
    capture.write_text(good + "(garbage) can0 XYZ#ZZ\n")
    path = tmp_path / "p.toml"
    path.write_text(f'[buses.b]\ninterface = "replay"\npath = "{capture}"\nspeed = "max"\n'
                    '[sources.lynk]\ntype = "discover-lynk2"\nbus = "b"\n'
                    '[sinks.c]\ntype = "console"\ninputs = ["lynk"]\n')
    result = run_canbridge("run", str(path))
    assert result.returncode == 2
    assert f"{capture}: not a readable capture after frame 30" in result.stderr
    assert "internal error" not in result.stderr


def test_a_component_that_fails_to_start_stops_the_run_naming_it(tmp_path: Path,
                                                                 channel: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f'[buses.b]\ninterface = "virtual"\nchannel = "{channel}"\n'
                    '[sources.frames]\ntype = "test-frames"\nbus = "b"\n'
                    '[sinks.broken]\ntype = "test-broken-start"\ninputs = ["frames"]\n'
                    f'[status]\nfile = "{tmp_path / "s.json"}"\n')
    result = run_canbridge("run", str(path), "--duration", "5")
    assert result.returncode == 1
    assert ("component broken failed to start: FileNotFoundError: acme.cfg is missing; "
            "stopping") in result.stderr


def test_a_broken_dbc_is_listed_as_broken_and_the_rest_still_are(tmp_path: Path) -> None:
    (tmp_path / "broken_dbc_plugin.py").write_text(
        "from pathlib import Path\nfrom canbridge import hookimpl\n"
        "@hookimpl\ndef canbridge_dbc_files():\n"
        f"    return [Path({str(tmp_path / 'broken.dbc')!r})]\n")
    (tmp_path / "broken.dbc").write_text('VERSION ""\nBU_: X\nBO_ 1 M: 8 X\n SG_ b 8|8@1+\n')
    result = run_canbridge("dbc", CANBRIDGE_PLUGINS="support_plugins,broken_dbc_plugin",
                           PYTHONPATH=f"{tmp_path}:{REPO / 'tests'}")
    assert result.returncode == 1
    assert f"broken: BROKEN: {tmp_path / 'broken.dbc'}:4: not a valid DBC file" in result.stdout
    assert "pylontech: 7 frames" in result.stdout  # the built-ins still listed


def test_a_plugin_that_registers_nothing_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "empty_plugin.py").write_text(
        "def canbridge_component_types():  # no @hookimpl\n    return []\n")
    result = run_canbridge("plugins", CANBRIDGE_PLUGINS="support_plugins,empty_plugin",
                           PYTHONPATH=f"{tmp_path}:{REPO / 'tests'}")
    assert result.returncode == 0
    assert ("empty_plugin (empty_plugin test) WARNING: registers nothing: is "
            "@canbridge.hookimpl missing, or a hook name misspelt?") in result.stdout


LAZY_PIPELINE = """\
[buses.battery]
interface = "replay"
path = "{sample}"
[buses.inverter]
interface = "virtual"
channel = "lazy-{channel}"
""" + LYNK_TO_PYLONTECH
IMPORTED = """\
import sys
from canbridge.cli import _load, main
if sys.argv[2] == "run":
    assert main(["run", sys.argv[1], "--duration", "0.3"]) == 0
else:
    assert _load(sys.argv[1]) is not None
print(" ".join(sorted(m for m in sys.modules
                      if m.startswith(("paho", "cantools", "canbridge_plugins.")))))
"""


def imported_by_load(pipeline: Path, cache: Path, command: str = "load") -> set[str]:
    env = {key: value for key, value in os.environ.items() if key != "CACHE_DIRECTORY"}
    env["XDG_CACHE_HOME"] = str(cache)
    done = subprocess.run([sys.executable, "-c", IMPORTED, str(pipeline), command], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_plugins_the_pipeline_does_not_name_are_not_imported(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(LAZY_PIPELINE.format(sample=SAMPLE, channel=uuid.uuid4()))
    cache = tmp_path / "cache"
    first = imported_by_load(pipeline, cache)  # no cache yet: every plugin, then the cache
    assert {"canbridge_plugins.web.sink", "canbridge_plugins.mqtt.sink"} <= first
    assert not {m for m in first if m.startswith("paho")}  # only the MQTT thread imports it
    assert (cache / "canbridge" / "plugins.json").is_file()

    second = imported_by_load(pipeline, cache)
    assert {"canbridge_plugins.discover_lynk2", "canbridge_plugins.pylontech"} <= second
    assert not {m for m in second if m.startswith("paho")}, second
    assert "canbridge_plugins.web" not in second and "canbridge_plugins.mqtt" not in second

    # A cache that no longer tells the truth costs the imports, never the answer.
    index = json.loads((cache / "canbridge" / "plugins.json").read_text())
    index["types"]["pylontech"] = "web"  # the other types still lead to their plugins
    (cache / "canbridge" / "plugins.json").write_text(json.dumps(index))
    assert "canbridge_plugins.mqtt.sink" in imported_by_load(pipeline, cache)


def test_a_warm_start_neither_imports_cantools_nor_parses_a_dbc(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(LAZY_PIPELINE.format(sample=SAMPLE, channel=uuid.uuid4()))
    cache = tmp_path / "cache"
    assert "cantools" in imported_by_load(pipeline, cache, "run")  # parses, fills the cache
    assert not {m for m in imported_by_load(pipeline, cache, "run") if m.startswith("cantools")}
