"""Files canbridge writes (state, data logs, records, the status file): can they be written,
and may the installed service write them?

A location that cannot be written is a warning, never a reason not to bridge: an SD card the
kernel remounted read-only must not keep the inverter without frames. The component that
writes there degrades and says so at run time.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

SERVICE_UNIT = Path("/etc/systemd/system/canbridge.service")


def cache_dir() -> Path:
    """canbridge's cache folder (plugin index, DBC layouts): systemd's CacheDirectory for the
    service, else the user's cache folder. Anything in it can be deleted at any time."""
    service = os.environ.get("CACHE_DIRECTORY")
    if service:
        return Path(service.split(":")[0])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "canbridge"


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
