"""DBC layouts: what cantools read, cached on disk so a start needs neither cantools nor a
parse; a changed file, a broken cache or an unwritable cache folder never give a wrong one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from canbridge.databases import builtin_dbc, load_dbc, parse_dbc

DATA = Path(__file__).resolve().parent / "data"
DBCS = [builtin_dbc("discover_lynk2"), builtin_dbc("pylontech"),
        builtin_dbc("pylontech_decivolt"), DATA / "codec_test.dbc", DATA / "imaginary_battery.dbc"]

LOAD = """\
import json, sys
from dataclasses import asdict
from canbridge.databases import load_dbc
layout = load_dbc(sys.argv[1])
print(json.dumps({"cantools": "cantools" in sys.modules,
                  "messages": [asdict(m) for m in layout.messages]}))
"""


def load_in_child(path: Path, cache: Path) -> dict:
    """load_dbc in a fresh interpreter with `cache` as the cache folder."""
    env = {key: value for key, value in os.environ.items() if key != "CACHE_DIRECTORY"}
    env["XDG_CACHE_HOME"] = str(cache)
    done = subprocess.run([sys.executable, "-c", LOAD, str(path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("path", DBCS, ids=lambda p: p.stem)
def test_a_layout_holds_what_cantools_read(path: Path) -> None:
    for message, layout in zip(parse_dbc(path).messages, load_dbc(path).messages, strict=True):
        assert (layout.name, layout.frame_id, layout.is_extended_frame, layout.length,
                layout.is_multiplexed(), layout.is_container) == (
            message.name, message.frame_id, message.is_extended_frame, message.length,
            message.is_multiplexed(), message.is_container)
        assert layout.cantools() is message
        for signal, ours in zip(message.signals, layout.signals, strict=True):
            for attribute in ("name", "start", "length", "byte_order", "is_signed", "is_float",
                              "scale", "offset", "minimum", "maximum", "unit"):
                theirs = getattr(signal, attribute)
                assert getattr(ours, attribute) == theirs, (signal.name, attribute)
                assert type(getattr(ours, attribute)) is type(theirs), (signal.name, attribute)
            assert ours.choices == {int(k): str(v) for k, v in (signal.choices or {}).items()}


def test_a_warm_cache_gives_the_same_layout_without_cantools(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for path in (builtin_dbc("discover_lynk2"), DATA / "codec_test.dbc"):
        cold = load_in_child(path, cache)
        assert cold["cantools"] is True
        warm = load_in_child(path, cache)
        assert warm["cantools"] is False
        assert warm["messages"] == cold["messages"]
    assert len(list((cache / "canbridge" / "dbc").glob("*.json"))) == 2


def test_a_changed_dbc_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "battery.dbc"
    original = (DATA / "imaginary_battery.dbc").read_text()
    path.write_text(original)
    cache = tmp_path / "cache"
    before = load_in_child(path, cache)
    assert load_in_child(path, cache)["cantools"] is False
    assert " (0.1,0) " in original
    path.write_text(original.replace(" (0.1,0) ", " (0.2,0) ", 1))
    after = load_in_child(path, cache)
    assert after["cantools"] is True
    assert scales(before).count(0.2) + 1 == scales(after).count(0.2)


def scales(loaded: dict) -> list[float]:
    return [signal["scale"] for message in loaded["messages"] for signal in message["signals"]]


def test_a_broken_or_unwritable_cache_costs_only_the_parse(tmp_path: Path) -> None:
    path = builtin_dbc("pylontech")
    cache = tmp_path / "cache"
    good = load_in_child(path, cache)
    (cached,) = (cache / "canbridge" / "dbc").glob("*.json")
    cached.write_text('{"digest": "')  # cut short, as by a power cut
    again = load_in_child(path, cache)
    assert again["cantools"] is True and again["messages"] == good["messages"]
    assert json.loads(cached.read_text())["messages"]  # written whole again

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    assert load_in_child(path, blocked)["messages"] == good["messages"]
