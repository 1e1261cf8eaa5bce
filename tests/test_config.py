"""Pipeline file validation: every problem at once, one line each, exit code 2."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import support_plugins

from canbridge.cli import main
from canbridge.config import ConfigError, load_pipeline, topological_order
from canbridge.registry import load_registry

pytestmark = pytest.mark.usefixtures("with_test_plugins")

GOOD = """\
[buses.battery]
interface = "virtual"
channel = "cfg-battery"

[buses.inverter]
interface = "virtual"
channel = "cfg-inverter"

[sources.frames]
type = "test-frames"
bus = "battery"

[transforms.tag]
type = "test-tag"
inputs = ["frames"]

[sinks.out]
type = "test-send"
inputs = ["tag"]
bus = "inverter"
"""


def validate(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str],
             command: str = "validate") -> tuple[int, list[str], str]:
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    code = main([command, str(path)])
    captured = capsys.readouterr()
    prefix = f"{path}"
    lines = [line.replace(prefix, "P") for line in captured.err.splitlines()]
    return code, lines, captured.out


def test_a_good_pipeline_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err, out = validate(tmp_path, GOOD, capsys)
    assert code == 0
    assert err == []
    assert out.strip().endswith("ok (2 buses, 3 components, 0 forwards)")


@pytest.mark.parametrize(("change", "expected"), [
    (("[sinks.out]\n", "[sinks.out]\nlable = 1\n"),
     'P:18: sinks.out.lable: unknown option (did you mean "label"?)'),
    (('bus = "inverter"', 'bus = 5'),
     "P:20: sinks.out.bus: expected a string, got an integer"),
    (('channel = "cfg-battery"', 'channel = "cfg-battery"\nbitrate = 5'),
     "P:4: buses.battery.bitrate: 5 is out of range (>= 1000, <= 1000000)"),
    (('type = "test-tag"', 'type = "test-tga"'),
     'P:14: transforms.tag.type: unknown transform type "test-tga" (did you mean "test-tag"?)'),
    (('type = "test-tag"', 'type = "test-send"'),
     'P:14: transforms.tag.type: "test-send" is a sink, not a transform: move it to '
     '[sinks.tag]'),
    (('inputs = ["tag"]', 'inputs = ["tga"]'),
     'P:19: sinks.out.inputs: names nothing: no source or transform called "tga" '
     '(did you mean "tag"?)'),
    (('inputs = ["tag"]', 'inputs = ["out"]'),
     'P:19: sinks.out.inputs: "out" is a sink: sinks produce no updates'),
    (('inputs = ["frames"]', 'inputs = ["frames", "tag"]'),
     "P:15: transforms.tag.inputs: a component cannot take its own output"),
    (('bus = "battery"', 'bus = "batery"'),
     'P:11: sources.frames.bus: no bus named "batery" (declare [buses.batery]) '
     '(did you mean "battery"?)'),
    (('interface = "virtual"\nchannel = "cfg-battery"', 'interface = "socketcn"'),
     'P:2: buses.battery.interface: unknown python-can interface "socketcn" '
     '(did you mean "socketcan"?)'),
    (('inputs = ["tag"]\n', 'inputs = []\n'), "P:19: sinks.out.inputs: must not be empty"),
    (('[sinks.out]\ntype = "test-send"\n', '[sinks.out]\n'),
     "P:17: sinks.out.type: missing the component type (type = \"...\")"),
    (('bus = "inverter"', ''), "P:17: sinks.out.bus: missing required option"),
    (("[buses.battery]", "[satus]\nevery_secs = 1\n\n[buses.battery]"),
     'P:1: satus: unknown table (did you mean "status"?)'),
    (('channel = "cfg-battery"', 'channel = "cfg-battery"\nspeed = 2.0'),
     'P:4: buses.battery.speed: only a bus with interface = "replay" takes this'),
    (('interface = "virtual"\nchannel = "cfg-battery"', 'interface = "replay"'),
     'P:1: buses.battery.path: a "replay" bus needs the capture file to play'),
    (('interface = "virtual"\nchannel = "cfg-battery"', 'interface = "replay"\npath = "no.log"'),
     "P:3: buses.battery.path: no such capture file: {tmp}/no.log"),
    (("[sinks.out]", "[sinks.tag]\ntype = \"test-collect\"\ninputs = [\"tag\"]\n\n[sinks.out]"),
     'P:17: sinks.tag: the name "tag" is already used in [transforms]; component names must '
     "be unique"),
    (('bus = "inverter"', 'bus = "inverter"\nlabel = "broken check"'),
     "P:17: sinks.out: the \"test-send\" plugin failed to check its options: "
     "RuntimeError('a bug in the plugin')"),
    (('bus = "inverter"', 'bus = "inverter"\nlabel = "broken bus check"'),
     "P:17: sinks.out: the \"test-send\" plugin failed to check its bus: "
     "RuntimeError('a bug in the plugin')"),
    (("[buses.battery]", "forwards = 5\n\n[buses.battery]"),
     "P:1: forwards: must be a table of named tables, like [forwards.NAME]"),
    (("[buses.battery]", "[forwards]\nkeepalive = 5\n\n[buses.battery]"),
     "P:2: forwards.keepalive: must be a table, like [forwards.keepalive]"),
    (("[buses.battery]", "status = 5\n\n[buses.battery]"),
     "P:1: status: must be a table, like [status]"),
    (("[buses.battery]", "[status]\nevery_secs = 0\n\n[buses.battery]"),
     "P:2: status.every_secs: 0 is out of range (>= 0.1, <= 3600)"),
])
def test_each_problem_is_one_line_with_file_line_and_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], change: tuple[str, str],
        expected: str) -> None:
    old, new = change
    assert old in GOOD
    code, err, _ = validate(tmp_path, GOOD.replace(old, new, 1), capsys)
    assert code == 2
    assert expected.format(tmp=tmp_path.resolve()) in err
    assert err[-1] == "P: 1 problem found"


def test_every_problem_is_found_at_once(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    text = (GOOD.replace('bus = "battery"', 'bus = "nowhere"')
            .replace('inputs = ["tag"]', 'inputs = ["tag", "ghost"]')
            .replace('channel = "cfg-inverter"', 'channel = "cfg-inverter"\nbitrate = "fast"'))
    code, err, _ = validate(tmp_path, text, capsys)
    assert code == 2
    assert err == [
        "P:1: buses.battery: warning: no component or forward uses this bus",
        "P:8: buses.inverter.bitrate: expected an integer, got a string",
        'P:12: sources.frames.bus: no bus named "nowhere" (declare [buses.nowhere])',
        'P:20: sinks.out.inputs: names nothing: no source or transform called "ghost"',
        "P: 3 problems found",
    ]


def test_cycles_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD + '\n[transforms.loop]\ntype = "test-tag"\ninputs = ["tag"]\n'
    text = text.replace('inputs = ["frames"]', 'inputs = ["frames", "loop"]')
    code, err, _ = validate(tmp_path, text, capsys)
    assert code == 2
    assert "P:24: transforms.loop.inputs: cycle: tag -> loop -> tag" in err


def test_an_unconsumed_source_is_a_warning_not_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD + '\n[sources.spare]\ntype = "test-ticker"\n'
    code, err, out = validate(tmp_path, text, capsys)
    assert code == 0
    assert err == ["P:22: sources.spare: warning: nothing takes this component's updates "
                   "(no sink or transform lists it in inputs)"]
    assert "ok (2 buses, 4 components" in out


def test_toml_syntax_errors_name_the_line(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, err, _ = validate(tmp_path, GOOD.replace('type = "test-tag"', 'type = test-tag'),
                            capsys)
    assert code == 2
    assert err[0].startswith("P:14: syntax: not valid TOML: ")
    code, err, _ = validate(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n", capsys)
    assert (code, err) == (2, ["P: syntax: not valid TOML: nested too deeply",
                              "P: 1 problem found"])


def test_a_missing_file_is_a_clear_error(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate", str(tmp_path / "nope.toml")])
    assert code == 2
    assert f"{tmp_path / 'nope.toml'}: file: cannot read: No such file or directory" in (
        capsys.readouterr().err)


def test_forwards_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD + ('\n[forwards.keepalive]\nfrom_bus = "inverter"\nto_bus = "inverter"\n'
                   'ids = [0x305, 0x20000000]\n')
    code, err, _ = validate(tmp_path, text, capsys)
    assert code == 2
    assert err[:2] == [
        "P:24: forwards.keepalive.to_bus: is the same bus as from_bus",
        "P:25: forwards.keepalive.ids: item 2: 536870912 is out of range (>= 0, <= 536870911)",
    ]
    code, err, _ = validate(tmp_path, text.replace('to_bus = "inverter"', 'to_bus = "batery"'),
                            capsys)
    assert err[0] == ('P:24: forwards.keepalive.to_bus: no bus named "batery" (declare '
                      '[buses.batery]) (did you mean "battery"?)')


def test_config_prints_every_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err, out = validate(tmp_path, GOOD, capsys, command="config")
    assert code == 0, err
    effective = tomllib.loads(out)
    assert effective["pipeline"] == {"name": "battery"}
    assert effective["sinks"]["out"] == {"type": "test-send", "inputs": ["tag"],
                                         "bus": "inverter", "label": ""}
    assert effective["buses"]["battery"] == {"interface": "virtual", "channel": "cfg-battery"}
    assert effective["status"]["every_secs"] == 10.0
    assert effective["log"]["level"] == "info"


def test_config_prints_the_forwards_with_their_defaults(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err, out = validate(tmp_path, GOOD, capsys, command="config")
    assert "forwards" not in tomllib.loads(out)
    text = GOOD + ('\n[forwards.keepalive]\nfrom_bus = "inverter"\nto_bus = "battery"\n'
                   'ids = [0x305]\n')
    code, err, out = validate(tmp_path, text, capsys, command="config")
    assert code == 0, err
    assert tomllib.loads(out)["forwards"] == {"keepalive": {
        "from_bus": "inverter", "to_bus": "battery", "ids": [0x305], "extended_ids": [],
        "max_per_sec": 20.0}}


def test_config_shows_replay_options_only_on_a_replay_bus(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "c.log"
    capture.write_text("(1.0) can0 351#00\n")
    text = GOOD.replace('interface = "virtual"\nchannel = "cfg-battery"',
                        f'interface = "replay"\npath = "{capture}"')
    code, err, out = validate(tmp_path, text, capsys, command="config")
    assert code == 0, err
    assert tomllib.loads(out)["buses"]["battery"] == {
        "interface": "replay", "path": str(capture.resolve()), "speed": 1.0, "loop": False,
        "max_replay_gap_secs": 3600.0}


def test_config_refuses_a_bad_file_with_exit_2(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, err, out = validate(tmp_path, GOOD.replace("test-tag", "nope"), capsys,
                              command="config")
    assert code == 2
    assert out == ""
    assert err[0].startswith("P:14: transforms.tag.type: unknown transform type")


def test_relative_paths_are_taken_from_the_pipeline_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD.replace('channel = "cfg-inverter"', 'channel = "cfg-inverter"\nrecord = "x.log"')
    code, _, out = validate(tmp_path, text, capsys, command="config")
    assert code == 0
    assert tomllib.loads(out)["buses"]["inverter"]["record"] == str(tmp_path.resolve() / "x.log")


def test_a_component_can_warn_about_an_allowed_but_unwise_option(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD + ('\n[sinks.mqtt]\ntype = "mqtt"\ninputs = ["tag"]\nusername = "me"\n'
                   'password = "secret"\n')
    code, err, _ = validate(tmp_path, text, capsys)
    assert code == 0
    assert err == ["P:26: sinks.mqtt.password: warning: written in the pipeline file; "
                   "prefer password_file"]


def test_a_forward_may_not_transmit_an_id_another_node_owns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD + ('\n[sinks.pylon]\ntype = "pylontech"\ninputs = ["tag"]\nbus = "inverter"\n'
                   '\n[forwards.wrong_way]\nfrom_bus = "battery"\nto_bus = "inverter"\n'
                   'ids = [0x305, 0x351]\n')
    code, err, _ = validate(tmp_path, text, capsys)
    assert code == 2
    assert err[0] == ('P:30: forwards.wrong_way.ids: 0x305 belongs to another node on bus '
                      '"inverter" (says the pylontech component "pylon"): canbridge must never '
                      'transmit it there')
    code, err, _ = validate(tmp_path, text.replace("ids = [0x305, 0x351]",
                                                   "extended_ids = [0x305]"), capsys)
    assert (code, err[0]) == (2, 'P:30: forwards.wrong_way.extended_ids: 0x305 belongs to another '
                                 'node on bus "inverter" (says the pylontech component '
                                 '"pylon"): canbridge must never transmit it there')


def test_forwards_keep_the_id_width_apart(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD + ('\n[forwards.keepalive]\nfrom_bus = "inverter"\nto_bus = "battery"\n'
                   'ids = [0x7FF, 0x800, 0x1ABCDEF0]\n\n[forwards.empty]\nfrom_bus = "inverter"\n'
                   'to_bus = "battery"\n')
    code, err, _ = validate(tmp_path, text, capsys)
    assert code == 2
    assert err == [
        "P:25: forwards.keepalive.ids: 0x800, 0x1ABCDEF0 is not an 11-bit ID (<= 0x7FF): list "
        "29-bit IDs in extended_ids",
        "P:27: forwards.empty.ids: give the IDs to copy in ids (11-bit) or extended_ids "
        "(29-bit)",
        "P: 2 problems found",
    ]


PYLON_SINK = '\n[sinks.pylon]\ntype = "pylontech"\ninputs = ["tag"]\nbus = "inverter"\n'


def test_an_unknown_inverter_profile_is_refused_with_a_suggestion(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err, _ = validate(tmp_path, GOOD + PYLON_SINK + 'inverter = "deyee"\n', capsys)
    assert code == 2
    assert err[0].startswith("P:26: sinks.pylon.inverter: 'deyee' is not one of \"generic\", ")
    assert err[0].endswith('(did you mean "deye"?)')


def test_config_shows_the_profile_values_and_an_explicit_option_wins(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD + PYLON_SINK + 'inverter = "sol-ark"\npad_to_8_bytes = false\n'
    code, err, out = validate(tmp_path, text, capsys, command="config")
    assert code == 0, err
    sink = tomllib.loads(out)["sinks"]["pylon"]
    assert (sink["inverter"], sink["voltage_resolution"], sink["pad_to_8_bytes"]) == (
        "sol-ark", 0.1, False)
    assert sink["stop_charge_by"] == "current"


def test_control_is_refused_for_an_anonymous_broker_elsewhere(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mqtt = '\n[sinks.mqtt]\ntype = "mqtt"\ninputs = ["tag"]\ncontrol = true\n'
    code, err, _ = validate(tmp_path, GOOD + mqtt + 'host = "homeassistant.lan"\n', capsys)
    assert code == 2
    assert err[0] == ("P:25: sinks.mqtt.control: commands from an anonymous connection to "
                      "homeassistant.lan are refused: set username (and a password), or use a "
                      "broker on this machine")
    for allowed in ('host = "127.0.0.1"\n', 'host = "homeassistant.lan"\nusername = "cb"\n'):
        code, err, _ = validate(tmp_path, GOOD + mqtt + allowed, capsys)
        assert code == 0, err


def test_config_never_prints_a_password(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD + ('\n[sinks.mqtt]\ntype = "mqtt"\ninputs = ["tag"]\nusername = "me"\n'
                   'password = "hunter2"\n')
    code, _, out = validate(tmp_path, text, capsys, command="config")
    assert code == 0
    assert "hunter2" not in out
    assert tomllib.loads(out)["sinks"]["mqtt"]["password"] == "********"


def test_current_shares_over_one_for_one_battery_are_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sinks = ('\n[sinks.a]\ntype = "pylontech"\ninputs = ["tag"]\nbus = "inverter"\n'
             'current_share = 0.7\n'
             '\n[sinks.b]\ntype = "pylontech-rs485"\ninputs = ["tag"]\nport = "/dev/ttyUSB9"\n'
             'current_share = 0.5\n')
    code, err, _ = validate(tmp_path, GOOD + sinks, capsys)
    assert code == 0
    assert err == ["P:32: sinks.b.current_share: warning: the inverters fed by 'frames' take "
                   "1.2 of its current limits together (a 0.7, b 0.5): more than the battery "
                   "allows"]
    # Shares that add up to the whole battery are fine; an input naming nothing (its own
    # error) and a cycle neither hang nor crash the check.
    code, err, _ = validate(tmp_path, GOOD + sinks.replace("0.7", "0.5"), capsys)
    assert (code, err) == (0, [])
    tangled = (GOOD.replace('inputs = ["frames"]', 'inputs = ["frames", "ghost", "loop"]')
               + '\n[transforms.loop]\ntype = "test-tag"\ninputs = ["tag"]\n' + sinks)
    code, err, _ = validate(tmp_path, tangled, capsys)
    assert (code, err) == (2, [
        'P:15: transforms.tag.inputs: names nothing: no source or transform called "ghost"',
        "P:24: transforms.loop.inputs: cycle: tag -> loop -> tag",
        "P:36: sinks.b.current_share: warning: the inverters fed by 'frames' take 1.2 of its "
        "current limits together (a 0.7, b 0.5): more than the battery allows",
        "P: 2 problems found"])


PYLONTECH = '[sinks.out]\ntype = "pylontech"\ninputs = ["tag"]\nbus = "inverter"\n'


@pytest.mark.parametrize(("options", "expected"), [
    ("plausible_voltage_min = 50.0\nplausible_voltage_max = 50.0\n",
     "P:22: sinks.out.plausible_voltage_max: must be above plausible_voltage_min"),
    ("max_charge_voltage = 39.9\n",
     "P:21: sinks.out.max_charge_voltage: 39.9 V is below plausible_voltage_min (40 V): the "
     "battery could never charge"),
    ("period_secs = 2.5\nstale_after_secs = 2.0\n",
     "P:22: sinks.out.stale_after_secs: must be at least period_secs"),
], ids=["no plausible range", "cap below the range", "stale before a period"])
def test_inverter_options_that_defeat_the_stop_model_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], options: str, expected: str) -> None:
    sink = GOOD[GOOD.index("[sinks.out]"):]
    code, err, _ = validate(tmp_path, GOOD.replace(sink, PYLONTECH + options), capsys)
    assert code == 2
    assert err == [expected, "P: 1 problem found"]


@pytest.mark.parametrize("options", [
    "plausible_voltage_min = 49.9\nplausible_voltage_max = 50.0\n",
    "max_charge_voltage = 40.0\n",
    "period_secs = 2.5\nstale_after_secs = 2.5\n",
], ids=["narrowest range", "cap at the range", "stale after one period"])
def test_the_edges_of_those_checks_are_allowed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], options: str) -> None:
    sink = GOOD[GOOD.index("[sinks.out]"):]
    code, err, _ = validate(tmp_path, GOOD.replace(sink, PYLONTECH + options), capsys)
    assert (code, err) == (0, [])


def test_unwritable_files_are_warnings_never_a_reason_not_to_bridge(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only /var/log or /var/lib (an SD card the kernel remounted read-only) used to
    make `validate` (and so the service's ExecStartPre) fail: no frames for the inverter."""
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    text = (GOOD.replace('channel = "cfg-inverter"',
                         f'channel = "cfg-inverter"\nrecord = "{blocked}/in.log"')
            + f'\n[sinks.log]\ntype = "datalog"\ninputs = ["tag"]\npath = "{blocked}/b.csv"\n'
            + f'\n[status]\nfile = "{blocked}/status.json"\n')
    code, err, _ = validate(tmp_path, text, capsys)
    assert code == 0
    assert err == [
        f"P:8: buses.inverter.record: warning: {blocked} is not a directory: this feature "
        "will not work, the bridge runs without it",
        f"P:26: sinks.log.path: warning: {blocked} is not a directory: this feature will not "
        "work, the bridge runs without it",
        f"P:29: status.file: warning: {blocked} is not a directory: this feature will not "
        "work, the bridge runs without it",
    ]


def test_paths_outside_the_service_read_write_paths_are_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from canbridge import locations

    unit = tmp_path / "canbridge.service"
    unit.write_text("[Service]\nProtectSystem=strict\n"
                    "ReadWritePaths=/var/lib/canbridge /var/log/canbridge\n")
    monkeypatch.setattr(locations, "SERVICE_UNIT", unit)
    text = GOOD + f'\n[sinks.log]\ntype = "datalog"\ninputs = ["tag"]\npath = "{tmp_path}/b.csv"\n'
    code, err, _ = validate(tmp_path, text, capsys)
    assert code == 0
    assert err == [f"P:25: sinks.log.path: warning: {tmp_path}/b.csv is outside the service's "
                   "ReadWritePaths (/var/lib/canbridge /var/log/canbridge /run/canbridge): "
                   "canbridge.service cannot write it"]


LYNK_PIPELINE = """\
[buses.battery]
interface = "virtual"
channel = "w-battery"
bitrate = 250000

[buses.inverter]
interface = "virtual"
channel = "w-inverter"
bitrate = 500000

[sources.lynk]
type = "discover-lynk2"
bus = "battery"

[transforms.glitch]
type = "glitch-filter"
inputs = ["lynk"]
signal = "voltage"
below = 48.0

[sinks.pylon]
type = "pylontech"
inputs = ["glitch"]
bus = "inverter"
"""


@pytest.mark.parametrize(("change", "expected", "code"), [
    (('bus = "inverter"', 'bus = "battery"'),
     'P:24: sinks.pylon.bus: the pylontech sink would send 0x351, 0x355, 0x356, 0x35E on bus '
     '"battery", where the discover-lynk2 source "lynk" reads them: give it the inverter\'s '
     'bus', 2),
    (('channel = "w-inverter"', 'channel = "w-battery"'),
     'P:8: buses.inverter.channel: bus "battery" is virtual w-battery already: two tables '
     "for one channel would hear each other's frames (swap or fix the channel)", 2),
    (("bitrate = 500000", "bitrate = 250000"),
     "P:24: sinks.pylon.bus: warning: bus 'inverter' runs at 250000 bit/s; Pylontech "
     "inverters talk at 500000", 0),
    (("bitrate = 250000", "bitrate = 500000"),
     "P:13: sources.lynk.bus: warning: bus 'battery' runs at 500000 bit/s; the LYNK II's "
     "Discover Serial CAN profile talks at 250000", 0),
    (('signal = "voltage"', 'signal = "volatge"'),
     "P:18: transforms.glitch.signal: \"volatge\" is not a signal of the vocabulary (did you "
     'mean "voltage"?)', 2),
])
def test_wiring_mistakes_are_caught(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    change: tuple[str, str], expected: str, code: int) -> None:
    got, err, _ = validate(tmp_path, LYNK_PIPELINE.replace(*change), capsys)
    assert got == code
    assert expected in err


def test_two_buses_without_a_channel_share_the_interfaces_default_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = LYNK_PIPELINE.replace('channel = "w-battery"\n', "")
    assert validate(tmp_path, text, capsys)[:2] == (0, [])  # one without a channel is fine
    code, err, _ = validate(tmp_path, text.replace('channel = "w-inverter"\n', ""), capsys)
    assert (code, err[0]) == (2, 'P:5: buses.inverter.channel: bus "battery" is virtual (its '
                                 "default channel) already: two tables for one channel would "
                                 "hear each other's frames (swap or fix the channel)")


def test_bus_options_python_can_would_ignore_are_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = LYNK_PIPELINE.replace(
        'bitrate = 500000\n',
        'bitrate = 500000\noptions = { recieve_own_messages = true, rx_queue_size = 8 }\n')
    code, err, _ = validate(tmp_path, text, capsys)
    assert code == 0
    assert err == ['P:10: buses.inverter.options.recieve_own_messages: warning: the "virtual" '
                   'interface takes no option "recieve_own_messages"; python-can would ignore '
                   'it (did you mean "receive_own_messages"?)']
    code, err, _ = validate(tmp_path, text.replace("rx_queue_size = 8", 'channel = "x"')
                            .replace("recieve_own", "receive_own"), capsys)
    assert code == 2
    assert err[0] == ("P:10: buses.inverter.options.channel: say it as the bus's own "
                      "`channel`, not inside `options`")


@pytest.mark.parametrize(("sink", "where"), [
    ('[sinks.log]\ntype = "datalog"\ninputs = ["lynk"]\npath = "b.csv"\n'
     'signals = ["soc", "volatge", "glitch_active", "balancing_active"]\n', "30: sinks.log"),
    ('[sinks.screen]\ntype = "console"\ninputs = ["lynk"]\nsignals = ["soc", "volatge"]\n',
     "29: sinks.screen"),
])
def test_unknown_signal_names_in_sinks_are_warnings(tmp_path: Path, sink: str, where: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, err, _ = validate(tmp_path, LYNK_PIPELINE + "\n" + sink, capsys)
    assert code == 0
    assert err == [f"P:{where}.signals: warning: \"volatge\" is "
                   'not a signal of the vocabulary (did you mean "voltage"?): nothing will '
                   "show under it unless a plugin of yours emits it"]


def test_a_bus_only_a_forward_uses_is_used(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    text = (LYNK_PIPELINE + '\n[buses.spare]\ninterface = "virtual"\nchannel = "w-spare"\n'
            '\n[forwards.keepalive]\nfrom_bus = "inverter"\nto_bus = "spare"\nids = [0x305]\n')
    assert validate(tmp_path, text, capsys)[:2] == (0, [])


def test_replay_buses_all_play_at_full_speed_or_none_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "c.log"
    capture.write_text("(1.0) can0 351#00\n")
    text = (GOOD.replace('interface = "virtual"\nchannel = "cfg-battery"',
                         f'interface = "replay"\npath = "{capture}"\nspeed = "max"')
            .replace('interface = "virtual"\nchannel = "cfg-inverter"',
                     f'interface = "replay"\npath = "{capture}"'))
    code, err, _ = validate(tmp_path, text, capsys)
    assert (code, err) == (2, [
        'P:6: buses.inverter.speed: replay bus "battery" plays at speed "max" on the capture\'s '
        'clock, so every replay bus must use speed "max"', "P: 1 problem found"])


def test_a_pipeline_of_buses_alone_is_a_warning(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, err, _ = validate(tmp_path, GOOD.split("[sources.frames]")[0], capsys)
    assert (code, err) == (0, [
        "P: sources: warning: the pipeline has no components: add at least one source and sink",
        "P:1: buses.battery: warning: no component or forward uses this bus",
        "P:5: buses.inverter: warning: no component or forward uses this bus"])


def test_components_are_built_after_their_inputs_whatever_the_file_order(
        tmp_path: Path) -> None:
    path = tmp_path / "pipeline.toml"
    path.write_text(GOOD.replace("[transforms.tag]", '[transforms.late]\ntype = "test-tag"\n'
                                 'inputs = ["tag"]\n\n[transforms.tag]')
                    .replace('inputs = ["tag"]\nbus', 'inputs = ["late"]\nbus'))
    config = load_pipeline(path, load_registry((support_plugins,)))
    assert [spec.name for spec in config.components] == ["frames", "late", "tag", "out"]
    assert [spec.name for spec in topological_order(config.components)] == [
        "frames", "tag", "late", "out"]


def test_a_config_error_says_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.toml"
    path.write_text(GOOD.replace('bus = "battery"', 'bus = "nowhere"'))
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, load_registry((support_plugins,)))
    assert str(caught.value) == (
        f"{path}:1: buses.battery: warning: no component or forward uses this bus\n"
        f'{path}:11: sources.frames.bus: no bus named "nowhere" (declare [buses.nowhere])')


def test_a_bus_nobody_uses_is_a_warning(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    text = LYNK_PIPELINE + '\n[buses.spare]\ninterface = "virtual"\nchannel = "w-spare"\n'
    code, err, _ = validate(tmp_path, text, capsys)
    assert code == 0
    assert err == ["P:26: buses.spare: warning: no component or forward uses this bus"]
