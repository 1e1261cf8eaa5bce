"""What a plugin registers is checked: a bad one is reported by name and skipped, and every
other plugin still loads."""

from __future__ import annotations

import logging
import types

import pytest
import support_plugins

from canbridge import Sink, hookimpl
from canbridge.registry import load_registry


class Unnamed(Sink):
    """A sink without a type_name."""


class Impostor(Sink):
    type_name = "test-collect"  # support_plugins' own
    summary = "registered twice"


def plugin(name: str, *registered: object) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def canbridge_component_types() -> list[object]:
        return list(registered)

    module.canbridge_component_types = canbridge_component_types  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize(("registered", "error"), [
    ((dict,), "failed to register: <class 'dict'> is not a canbridge Source, Transform or "
              "Sink class"),
    ((Unnamed,), "failed to register: Unnamed has no type_name"),
    ((Impostor,), "failed to register: component type 'test-collect' is already registered "
                  "by plugin 'support_plugins'"),
])
def test_a_plugin_that_registers_a_bad_type_is_skipped_and_named(
        caplog: pytest.LogCaptureFixture, registered: tuple[object, ...], error: str) -> None:
    with caplog.at_level(logging.ERROR, logger="canbridge.plugins"):
        registry = load_registry((support_plugins, plugin("bad_plugin", *registered)))
    assert [(p.name, p.error) for p in registry.broken] == [("bad_plugin", error)]
    assert caplog.messages == [f"plugin 'bad_plugin' (bad_plugin) skipped: {error}"]
    assert registry.types["test-collect"] is support_plugins.Collect  # the others still load
