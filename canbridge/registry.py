"""The plugin manager: finds plugins through entry points and collects what they register.

Entry points are loaded one by one, so a plugin that fails to import or to register is
reported by name and skipped while every other plugin still loads.

`canbridge run` and `validate` load lazily: a cache (written after a full load) says which
plugin provides which component type, so only the plugins a pipeline names are imported (no
paho without an MQTT sink). Anything the cache cannot answer, an unknown type or one its
plugin no longer registers, loads every plugin, as without a cache.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType

import pluggy

from canbridge.component import Component
from canbridge.hooks import PROJECT, Hooks
from canbridge.locations import read_cache, write_cache
from canbridge.versions import dist_version

ENTRY_POINT_GROUP = "canbridge.plugins"
log = logging.getLogger("canbridge.plugins")


@dataclass
class PluginInfo:
    name: str
    module: str
    version: str
    error: str | None = None
    warning: str | None = None


class _LazyTypes(Mapping[str, "type[Component]"]):
    """Component types by name, importing the plugin of a type when it is asked for."""

    def __init__(self, registry: Registry, index: dict[str, EntryPoint]):
        self.registry = registry
        self.index = index
        self.loaded: dict[str, type[Component]] = {}

    def __getitem__(self, name: str) -> type[Component]:
        if name not in self.loaded and name in self.index:
            self.registry.load_plugin(self.index[name])
        if name not in self.loaded:
            self.registry.load_all()
        return self.loaded[name]

    def __setitem__(self, name: str, cls: type[Component]) -> None:
        self.loaded[name] = cls

    def __iter__(self) -> Iterator[str]:
        self.registry.load_all()
        return iter(dict(self.loaded))

    def __len__(self) -> int:
        self.registry.load_all()
        return len(self.loaded)


@dataclass
class Registry:
    """Component types by kind and type name, DBC files, and what each plugin did."""

    types: dict[str, type[Component]] | _LazyTypes = field(default_factory=dict)
    dbc_files: list[Path] = field(default_factory=list)
    plugins: list[PluginInfo] = field(default_factory=list)
    owner: dict[str, str] = field(default_factory=dict)
    entry_points: list[EntryPoint] = field(default_factory=list)
    loaded_plugins: set[str] = field(default_factory=set)

    @property
    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]

    def load_plugin(self, ep: EntryPoint) -> None:
        """Import and register one entry point's plugin, once."""
        if ep.name in self.loaded_plugins:
            return
        self.loaded_plugins.add(ep.name)
        try:
            module = ep.load()
        except Exception as exc:
            _report(self, ep.name, ep.value, dist_version(ep.dist), f"failed to import: {exc!r}")
            return
        _register(self, ep.name, ep.value, dist_version(ep.dist), module)

    def load_all(self) -> None:
        """Every plugin not loaded yet; then the cache is written for the next start."""
        if all(ep.name in self.loaded_plugins for ep in self.entry_points):
            return
        for ep in self.entry_points:
            self.load_plugin(ep)
        _write_cache(self)


def load_registry(extra_modules: tuple[ModuleType, ...] = (), *, lazy: bool = False
                  ) -> Registry:
    """Every plugin of the entry-point group (and `extra_modules`, for tests); with `lazy`,
    each when one of its types is first asked for, where the cache knows which it is."""
    registry = Registry(entry_points=sorted(entry_points(group=ENTRY_POINT_GROUP),
                                            key=lambda e: e.name))
    index = _cached_index(registry.entry_points) if lazy else None
    if index is None:
        registry.load_all()
    else:
        registry.types = _LazyTypes(registry, index)
    for module in extra_modules:
        _register(registry, module.__name__, module.__name__, "test", module)
    return registry


def _register(registry: Registry, name: str, module_name: str, version: str,
              module: object) -> None:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(Hooks)
    try:
        pm.register(module, name=name)
        types = [t for batch in pm.hook.canbridge_component_types() for t in batch]
        dbcs = [Path(p) for batch in pm.hook.canbridge_dbc_files() for p in batch]
        for cls in types:
            _check_type(cls)
            if cls.type_name in registry.owner and registry.owner[cls.type_name] != name:
                raise ValueError(f"component type {cls.type_name!r} is already registered "
                                 f"by plugin {registry.owner[cls.type_name]!r}")
    except Exception as exc:
        _report(registry, name, module_name, version, f"failed to register: {exc}")
        return
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


CACHE_NAME = "plugins.json"


def _signature(eps: list[EntryPoint]) -> list[list[str]]:
    return [[ep.name, ep.value, dist_version(ep.dist)] for ep in eps]


def _cached_index(eps: list[EntryPoint]) -> dict[str, EntryPoint] | None:
    """Type name -> the entry point that provides it, if the cache is of these plugins."""
    cache = read_cache(CACHE_NAME)
    try:
        if cache["plugins"] != _signature(eps):
            return None
        by_name = {ep.name: ep for ep in eps}
        return {type_name: by_name[plugin] for type_name, plugin in cache["types"].items()}
    except (KeyError, TypeError, AttributeError):
        return None


def _write_cache(registry: Registry) -> None:
    """A cache: failing to write it costs the next start its imports, nothing else."""
    if registry.broken:
        return  # a broken plugin is tried again at the next start
    owners = {t: p for t, p in registry.owner.items() if p in registry.loaded_plugins}
    write_cache(CACHE_NAME, {"plugins": _signature(registry.entry_points), "types": owners})


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
