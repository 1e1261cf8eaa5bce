"""A synthetic day (cold morning, hot afternoon, SOC 20 -> 100 %) replayed through the
production pipeline with all four charge-shaping transforms of examples/pipeline.toml
uncommented, checked on the wire: the Pylontech 0x351 and 0x35C at chosen moments.

The day is compressed into two hours of LYNK II frames at 1 Hz: the transforms depend on
temperature, SOC and elapsed time, not on the time of day.
"""

from __future__ import annotations

import json
import re
import struct
import tomllib
import uuid
from pathlib import Path

import can
import tomli_w
from conftest import REPO, run_canbridge, write_capture

T0 = 1_750_000_000.0
SECONDS = 7200
STEADY_35A = bytes.fromhex("ABAAFEAFAAFAFF")


def temperature(second: int) -> float:
    """A cold morning, a mild late morning, a hot afternoon, a mild evening."""
    return 2.0 if second < 1800 else 25.0 if second < 3600 else 48.0 if second < 5400 else 30.0


def soc(second: int) -> int:
    return 20 if second < 600 else min(100, 20 + (second - 600) // 75)


def day_frames():
    for second in range(SECONDS):
        payloads = (
            (0x351, struct.pack("<HHHH", 559, 2820, 2820, 432)),
            (0x355, struct.pack("<HH4x", soc(second), 100)),
            (0x356, struct.pack("<Hhh2x", round(500 + soc(second) * 0.4), 100,
                                round(temperature(second) * 10))),
            (0x35A, STEADY_35A),
        )
        for k, (frame_id, data) in enumerate(payloads):
            yield T0 + second + 0.001 * (k + 1), frame_id, data


def production_with_shaping(folder: Path, capture: Path) -> Path:
    text = (REPO / "examples" / "pipeline.toml").read_text()
    block = re.search(r"^# -- Charge shaping.*?\n(# \[transforms\..*?)\n\n", text, re.S | re.M)
    assert block is not None, "the charge-shaping block of examples/pipeline.toml moved"
    enabled = "\n".join(line.removeprefix("#").removeprefix(" ")
                        for line in block.group(1).splitlines())
    config = tomllib.loads(text + "\n" + enabled + "\n")
    config["buses"]["battery"] = {"interface": "replay", "path": str(capture), "speed": "max"}
    config["buses"]["inverter"] = {"interface": "virtual", "channel": f"day-{uuid.uuid4()}",
                                   "record": str(folder / "inverter.log")}
    config["transforms"]["balancing"]["state_file"] = str(folder / "balancing.toml")
    del config["sinks"]["mqtt"]
    config["sinks"]["datalog"]["path"] = str(folder / "log" / "battery.csv")
    config["sinks"]["web"]["listen"] = "127.0.0.1:0"
    config["sinks"]["inverter"]["inputs"] = ["ramp"]
    config["sinks"]["datalog"]["inputs"] = ["ramp"]
    config["status"] = {"file": str(folder / "status.json")}
    path = folder / "pipeline.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def test_a_shaped_day_on_the_wire(tmp_path: Path) -> None:
    capture = write_capture(tmp_path / "day.log", day_frames())
    pipeline = production_with_shaping(tmp_path, capture)
    assert set(tomllib.loads(pipeline.read_text())["transforms"]) == {
        "glitch", "balancing", "derate", "taper", "reserve", "ramp"}
    result = run_canbridge("run", str(pipeline), timeout=120)
    assert result.returncode == 0, result.stderr

    sent: dict[int, dict[int, str]] = {}
    for msg in can.LogReader(str(tmp_path / "inverter.log")):
        if not msg.is_rx:
            second = round(msg.timestamp - T0 - 0.003)
            sent.setdefault(second, {})[msg.arbitration_id] = msg.data.hex(" ").upper()

    def at(second: int) -> tuple[str, str]:
        """0x351 and 0x35C of the burst that carries data second `second`."""
        burst = sent[second + 1]
        return burst[0x351], burst[0x35C]

    # Cold morning, SOC 20 %: derated to 20 A at 2 °C, discharge stopped at the reserve.
    assert at(300) == ("2F 02 C8 00 00 00 B0 01", "80 00")
    # 25 °C, SOC 48 %: nothing shapes; the ramps from 20 A and 0 A have caught up.
    assert at(2700) == ("2F 02 04 0B 04 0B B0 01", "C0 00")
    # Released from the reserve at SOC 23 % (second 825): DCL rises 10 A/s from 0.
    assert [at(second)[0][12:17] for second in (824, 825, 826)] == ["00 00", "64 00", "C8 00"]
    # Hot afternoon, 48 °C: 282 + (50 - 282) x 3/5 = 142.8 A.
    assert at(4500) == ("2F 02 94 05 04 0B B0 01", "C0 00")
    # Evening, 30 °C, SOC 96 %: the taper's 100 + (40 - 100) / 3 = 80 A.
    assert at(6300) == ("2F 02 20 03 04 0B B0 01", "C0 00")

    status = json.loads((tmp_path / "status.json").read_text())["components"]
    assert status["taper"]["state"] == "active"
    assert status["taper"]["last_change"] == "CCL 282 → 40 A: soc 100 % on the taper"
    assert status["derate"]["state"] == "idle"
    assert status["reserve"]["discharge_stopped"] is False
