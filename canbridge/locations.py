"""Files canbridge writes (state, data logs, records, the status file): can they be written,
and may the installed service write them?

A location that cannot be written is a warning, never a reason not to bridge: an SD card the
kernel remounted read-only must not keep the inverter without frames. The component that
writes there degrades and says so at run time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from canbridge.documents import json_document

SERVICE_UNIT = Path("/etc/systemd/system/canbridge.service")
log = logging.getLogger("canbridge")


def cache_dir() -> Path:
    """canbridge's cache folder (plugin index, DBC layouts): systemd's CacheDirectory for the
    service, else the user's cache folder. Anything in it can be deleted at any time."""
    service = os.environ.get("CACHE_DIRECTORY")
    if service:
        return Path(service.split(":")[0])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "canbridge"


def read_cache(name: str) -> Any:
    """The JSON document kept under `name` in the cache folder, or None."""
    try:
        return json_document((cache_dir() / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_cache(name: str, doc: Any) -> None:
    """Keep `doc` under `name` in the cache folder, whole or not at all. A cache that cannot
    be written only costs the next start the work it saves."""
    path = cache_dir() / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("cache %s not written: %s", path, exc)


def location_problem(path: Path) -> str | None:
    """Why a file cannot be written at `path` (as this user), or None when it can."""
    try:
        if path.is_dir():
            return f"{path} is a directory, not a file"
        existing = path.parent
        while not existing.exists():
            existing = existing.parent
    except OSError as exc:  # a folder on the way that we may not even look into
        return f"cannot look into {exc.filename or path.parent} ({exc.strerror or exc})"
    if not existing.is_dir():
        return f"{existing} is not a directory"
    # Try it for real: permissions, read-only mounts and ACLs all show up here, even for root.
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        what = "directory" if existing == path.parent else "nearest existing directory"
        return f"{what} {existing} is not writable ({exc.strerror or exc})"
    return None


def service_writable_paths(unit: Path | None = None) -> list[Path] | None:
    """The installed service's ReadWritePaths (its only writable places besides its
    runtime folder), or None when no hardened unit is installed."""
    unit = unit or SERVICE_UNIT
    try:
        text = unit.read_text(encoding="utf-8")
    except OSError:
        return None
    if not re.search(r"^ProtectSystem\s*=\s*strict", text, re.M):
        return None
    paths = [Path(p.lstrip("-")) for line in re.findall(r"^ReadWritePaths\s*=\s*(.+)$", text, re.M)
             for p in line.split()]
    return [*paths, Path("/run/canbridge")]


def outside_service(path: Path, writable: list[Path]) -> bool:
    return not any(path == folder or folder in path.parents for folder in writable)
