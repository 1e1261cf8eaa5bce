"""The README's option reference is generated from the schemas and must not drift."""

from __future__ import annotations

from conftest import REPO

from canbridge import profiles
from canbridge.optiondocs import INVERTERS_BEGIN, INVERTERS_END, main, render
from canbridge.registry import load_registry


def test_the_readme_option_reference_matches_the_schemas() -> None:
    assert main(["--check", str(REPO / "README.md")]) == 0, (
        "README.md is out of date: run python -m canbridge.optiondocs README.md")


def test_every_built_in_type_and_option_is_documented() -> None:
    registry = load_registry()
    text = render(registry)
    for type_name, cls in registry.types.items():
        assert f'type = "{type_name}"' in text
        for option in cls.schema():
            assert f"| `{option.name}` |" in text


def test_the_readme_inverter_table_lists_every_profile_and_its_sources() -> None:
    text = (REPO / "README.md").read_text()
    table = text[text.index(INVERTERS_BEGIN):text.index(INVERTERS_END)]
    for name in profiles.names():
        profile = profiles.load(name)
        assert f"| `{name}` |" in table
        for source in profile.sources.values():
            assert source in table
    assert "| yes |" not in table  # nothing is confirmed on real hardware yet


def test_the_commissioning_commands_of_the_readme_exist() -> None:
    """Every `canbridge COMMAND` the README tells an owner to type is a real command, and
    the example pipeline marks the lines to change."""
    import re

    from canbridge.cli import _parser

    text = (REPO / "README.md").read_text()
    code = "\n".join(re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S))
    commands = set(re.findall(r"^(?:sudo )?canbridge (\w+)", code, re.M)) | set(
        re.findall(r"`canbridge (\w+)", text))
    choices = set(_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {"doctor", "status", "run", "validate", "config"} <= commands
    assert commands <= choices, commands - choices
    example = (REPO / "examples" / "pipeline.toml").read_text()
    assert example.count("# CHANGE") >= 3
