"""The plugin manager: finds plugins through entry points and collects what they register.

Entry points are loaded one by one, so a plugin that fails to import or to register is
reported by name and skipped while every other plugin still loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType

import pluggy

from canbridge.component import Component
from canbridge.hooks import PROJECT, Hooks

ENTRY_POINT_GROUP = "canbridge.plugins"
log = logging.getLogger("canbridge.plugins")


@dataclass
class PluginInfo:
    name: str
    module: str
    version: str
    error: str | None = None
    warning: str | None = None


@dataclass
class Registry:
    """Component types by kind and type name, DBC files, and what each plugin did."""

    types: dict[str, type[Component]] = field(default_factory=dict)
    dbc_files: list[Path] = field(default_factory=list)
    plugins: list[PluginInfo] = field(default_factory=list)
    owner: dict[str, str] = field(default_factory=dict)

    @property
    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]


def _dist_version(ep: EntryPoint) -> str:
    return ep.dist.version if ep.dist is not None else "?"


def load_registry(extra_modules: tuple[ModuleType, ...] = ()) -> Registry:
    """Load every plugin of the entry-point group (and `extra_modules`, for tests)."""
    registry = Registry()
    candidates: list[tuple[str, str, str, object]] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            module = ep.load()
        except Exception as exc:
            _report(registry, ep.name, ep.value, _dist_version(ep), f"failed to import: {exc!r}")
            continue
        candidates.append((ep.name, ep.value, _dist_version(ep), module))
    for module in extra_modules:
        candidates.append((module.__name__, module.__name__, "test", module))

    for name, module_name, version, module in candidates:
        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(Hooks)
        try:
            pm.register(module, name=name)
            types = [t for batch in pm.hook.canbridge_component_types() for t in batch]
            dbcs = [Path(p) for batch in pm.hook.canbridge_dbc_files() for p in batch]
            for cls in types:
                _check_type(cls)
                if cls.type_name in registry.types and registry.owner[cls.type_name] != name:
                    raise ValueError(f"component type {cls.type_name!r} is already registered "
                                     f"by plugin {registry.owner[cls.type_name]!r}")
        except Exception as exc:
            _report(registry, name, module_name, version, f"failed to register: {exc}")
            continue
        for cls in types:
            registry.types[cls.type_name] = cls
            registry.owner[cls.type_name] = name
        registry.dbc_files.extend(dbcs)
        warning = None
        if not types and not dbcs:
            warning = ("registers nothing: is @canbridge.hookimpl missing, or a hook name "
                       "misspelt? (canbridge_component_types, canbridge_dbc_files)")
            log.warning("plugin %r (%s) %s", name, module_name, warning)
        registry.plugins.append(PluginInfo(name, module_name, version, warning=warning))
    return registry


def _check_type(cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Component)):
        raise TypeError(f"{cls!r} is not a canbridge Source, Transform or Sink class")
    if not cls.type_name:
        raise TypeError(f"{cls.__name__} has no type_name")
    if cls.kind not in ("source", "transform", "sink"):
        raise TypeError(f"{cls.__name__} must derive from Source, Transform or Sink")


def _report(registry: Registry, name: str, module: str, version: str, error: str) -> None:
    log.error("plugin %r (%s) skipped: %s", name, module, error)
    registry.plugins.append(PluginInfo(name, module, version, error))
