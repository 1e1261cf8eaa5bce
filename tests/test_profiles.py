"""The shipped inverter profiles: data a user can trust, each value with its public source."""

from __future__ import annotations

import pytest
from canbridge_plugins.pylontech import PylontechSink

from canbridge import profiles
from canbridge.schema import apply_schema

REQUIRED_NAMES = {"generic", "deye", "sol-ark", "victron", "sofar", "luxpower", "growatt",
                  "midnite", "srne", "voltronic", "solis", "goodwe", "schneider"}


def test_every_required_profile_is_shipped_and_generic_comes_first() -> None:
    assert set(profiles.names()) == REQUIRED_NAMES
    assert profiles.names()[0] == "generic"


@pytest.mark.parametrize("name", sorted(REQUIRED_NAMES))
def test_each_profile_is_valid_sink_defaults_with_a_source_per_value(name: str) -> None:
    profile = profiles.load(name)
    assert profile.inverters and profile.special
    assert profile.confirmed_on_hardware is False  # none has been tried on real hardware yet
    assert set(profile.sources) == set(profile.options)
    assert all(len(source) > 20 for source in profile.sources.values())
    if not profile.options and name != "generic":
        assert profile.note.startswith("equals generic"), name
    values, problems = apply_schema(PylontechSink.schema(), {"bus": "inverter",
                                                             "inputs": ["lynk"]},
                                    presets=PylontechSink.presets({"inverter": name}))
    assert problems == []
    assert list(PylontechSink.check(values)) == []
    for key, value in profile.options.items():
        assert values[key] == value


@pytest.mark.parametrize(("name", "expected"), [
    ("deye", {"stop_charge_by": "voltage", "manufacturer": "PYLON"}),
    ("victron", {"stop_charge_by": "voltage"}),
    ("sol-ark", {"pad_to_8_bytes": True, "voltage_resolution": 0.1}),
    ("sofar", {"stop_current": 0.1}),
    ("solis", {"on_stale": "safe"}),
])
def test_the_quirks_with_a_public_source(name: str, expected: dict) -> None:
    assert profiles.load(name).options == expected


def test_a_broken_profile_file_is_named(tmp_path, monkeypatch) -> None:
    (tmp_path / "broken.toml").write_text('inverters = "X"\n[options.stop_current]\n'
                                          "value = 0.1\n")
    monkeypatch.setattr(profiles, "_folder", lambda: tmp_path)
    profiles.load.cache_clear()
    try:
        with pytest.raises(profiles.ProfileError, match=r"^profile file broken.toml: "
                           r"options.stop_current needs a value and a public source$"):
            profiles.load("broken")
    finally:
        profiles.load.cache_clear()
