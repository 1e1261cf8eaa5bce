"""The status file and `canbridge status`.

The engine writes the pipeline's health as JSON every `every_secs` wall seconds (and once
at stop). `canbridge status` reads it back: it never talks to the service, so it works for
any user who can read the file, and a stuck or dead service shows as an old file.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path as FilePath
from typing import Any, TextIO

from canbridge.documents import json_document, toml_document
from canbridge.schema import Number, Option, Path

RUN_DIR = FilePath("/run/canbridge")
"""The systemd unit's RuntimeDirectory: where the service's status file lives."""

STATUS_NAME = "status.json"
MIN_STALE_SECS = 10.0
"""A status file older than max(3 x every_secs, this) means the service is stuck or down."""

UNHEALTHY_COMPONENT_STATES = frozenset({"safe", "silent", "stale", "error"})
"""Component states that mean it is not doing its job (no real data for the inverter,
writes failing): `canbridge status` exits 1."""

STATUS_OPTIONS: tuple[Option, ...] = (
    Option("file", Path(), default=None, written=True,
           help="where the status file is written (unset: /run/canbridge/status.json, "
                "else $XDG_RUNTIME_DIR/canbridge, else /tmp/canbridge-UID)"),
    Option("every_secs", Number(min=0.1, max=3600.0), default=10.0,
           help="how often the status file is rewritten, in seconds"),
)
_DEFAULT_EVERY_SECS: float = {o.name: o.default for o in STATUS_OPTIONS}["every_secs"]


def default_status_path() -> FilePath:
    """Where the status file goes when the pipeline does not say."""
    if RUN_DIR.is_dir() and os.access(RUN_DIR, os.W_OK | os.X_OK):
        return RUN_DIR / STATUS_NAME
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return FilePath(runtime) / "canbridge" / STATUS_NAME
    return _shared_tmp_folder() / STATUS_NAME


def _shared_tmp_folder() -> FilePath:
    """The last-resort folder, in the /tmp every user shares."""
    return FilePath(tempfile.gettempdir()) / f"canbridge-{os.getuid()}"


def _default_read_path() -> FilePath:
    # Another user (the operator, not the service account) must find the service's file
    # in /run/canbridge even though they could not write there themselves.
    service = RUN_DIR / STATUS_NAME
    return service if service.exists() else default_status_path()


def _private_folder(folder: FilePath) -> None:
    """A folder of ours in the shared /tmp: created 0700, and refused when another user made
    it first (they could then read or replace our status file)."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(f"{folder} is not a private folder of user id {os.getuid()} (made by "
                      f"someone else?): not writing the status there; set [status] file")


def write_status(path: FilePath | str, doc: Mapping[str, Any]) -> None:
    """Write `doc` as JSON atomically (temp file in the same folder, then rename).

    Creates the folder. Raises OSError when the file cannot be written; a reader never sees
    a half-written file.
    """
    path = FilePath(path)
    if path.parent == _shared_tmp_folder():
        _private_folder(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    # default=str: one odd value in a component's status must not cost the whole file.
    text = json.dumps(doc, indent=2, default=str) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(tmp, 0o644)  # the operator reads it as another user; it holds no secret
        os.replace(tmp, path)
    except BaseException:
        FilePath(tmp).unlink(missing_ok=True)
        raise


def _pipeline_status_file(pipeline: str) -> FilePath | None:
    """The `[status] file` of a pipeline file, relative to its folder; None when unset."""
    source = FilePath(pipeline)
    table = toml_document(source.read_text(encoding="utf-8")).get("status") or {}
    value = table.get("file") if isinstance(table, dict) else None
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError("[status] file: expected a path")
    return source.parent / os.path.expanduser(value)  # as the config loader reads it


def status_command(file: str | None, pipeline: str | None, as_json: bool,
                   out: TextIO | None = None) -> int:
    """`canbridge status [PIPELINE] [--file F] [--json]`.

    Prints the report (or the JSON document) to `out`, problems to stderr. Exit code 0 when
    the service runs and every component and bus is healthy; 1 when the status file is
    missing, unreadable, stale (the service is stuck or down) or says stopped, or when a
    component is in a safe, silent, stale or error state or a bus is not ok; 2 for a bad
    PIPELINE.
    """
    out = sys.stdout if out is None else out  # looked up per call: tests swap sys.stdout
    err = sys.stderr
    path: FilePath | None = FilePath(file) if file else None
    if path is None and pipeline:
        try:
            path = _pipeline_status_file(pipeline)
        except (OSError, ValueError) as exc:
            print(f"canbridge status: {pipeline}: {exc}", file=err)
            return 2
    if path is None:
        path = _default_read_path()

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        print(f"no status file at {path}: is canbridge running?", file=err)
        return 1
    except OSError as exc:
        print(f"cannot read status file {path}: {exc.strerror or exc}", file=err)
        return 1
    try:
        doc = json_document(text)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        print(f"status file {path} is not valid: {exc}", file=err)
        return 1

    now = time.time()
    if as_json:
        json.dump(doc, out, indent=2)
        out.write("\n")
    else:
        out.write(format_report(doc, now))
    problems = health_problems(doc, now, path)
    for problem in problems:
        print(problem, file=err)
    return 1 if problems else 0


def health_problems(doc: Mapping[str, Any], now: float, path: FilePath | str) -> list[str]:
    """Why the status document says the service is not healthy (empty when it is)."""
    written = _number(doc.get("written_at"))
    if doc.get("state") == "stopped":
        when = f" at {_clock_time(written)}" if written is not None else ""
        return [f"canbridge is not running: pipeline {doc.get('pipeline', '?')} "
                f"stopped{when}"]
    every = _number(doc.get("every_secs")) or _DEFAULT_EVERY_SECS
    limit = max(3 * every, MIN_STALE_SECS)
    if written is None:
        return [f"status file {path} has no written_at time"]
    age = now - written
    if age > limit:
        return [f"status file {path} was last written {_age(age)} ago (every {every:g} s "
                f"expected): canbridge (pid {doc.get('pid', '?')}) is stuck or down"]
    pid = doc.get("pid")
    if isinstance(pid, int) and not _process_exists(pid):
        return [f"canbridge (pid {pid}) is not running: it ended without writing "
                f"its final status (killed or crashed)"]
    problems = []
    for name, status in _tables(doc.get("components")):
        state = status.get("state")
        if state in UNHEALTHY_COMPONENT_STATES:
            problems.append(f"component {name} is {state}")
    for name, status in _tables(doc.get("buses")):
        state = status.get("state")
        if state != "ok":
            error = status.get("last_error")
            problems.append(f"bus {name} is {state}" + (f" ({error})" if error else ""))
    return problems


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, run by another user (the service account)
    return True


# -- the report -------------------------------------------------------------------------

_COMPONENT_COLUMNS = (("state", "state"), ("frames_in", "in"), ("frames_out", "out"),
                      ("errors", "errors"), ("last_seen_age", "seen"))
_BUS_COLUMNS = (("state", "state"), ("frames_in", "in"), ("frames_out", "out"),
                ("frames_suppressed", "dry-run"), ("send_errors", "send errors"),
                ("reopens", "reopens"))
_NOT_DETAILS = {"kind", "type"} | {key for key, _ in _COMPONENT_COLUMNS}


def format_report(doc: Mapping[str, Any], now: float) -> str:
    """The human-readable report: a header, a component table, a bus table."""
    started = _number(doc.get("started_at"))
    written = _number(doc.get("written_at"))
    engine = doc.get("engine") if isinstance(doc.get("engine"), dict) else {}
    lines = [
        f"canbridge {doc.get('version', '?')}: pipeline {doc.get('pipeline', '?')} "
        f"({doc.get('file', '?')}), pid {doc.get('pid', '?')}, {doc.get('state', '?')}, "
        f"{doc.get('clock', '?')} clock",
        ", ".join(part for part in (
            f"up {_age(now - started)}" if started is not None else "",
            f"status written {_age(now - written)} ago" if written is not None else "",
            "engine: " + ", ".join(f"{key} {engine[key]}" for key in
                                   ("frames", "updates", "errors") if key in engine)
            if engine else "",
        ) if part),
    ]
    components = [
        [name, str(status.get("type", "?")),
         *(_cell(key, status.get(key)) for key, _ in _COMPONENT_COLUMNS),
         " ".join(f"{key}={_cell(key, value)}" for key, value in status.items()
                  if key not in _NOT_DETAILS)]
        for name, status in _tables(doc.get("components"))
    ]
    if components:
        lines += ["", *_table(["component", "type", *(h for _, h in _COMPONENT_COLUMNS),
                               "details"], components)]
    buses = [
        [name, f"{status.get('interface', '?')} {status.get('channel', '')}".strip(),
         *(_cell(key, status.get(key)) for key, _ in _BUS_COLUMNS),
         str(status.get("last_error") or "")]
        for name, status in _tables(doc.get("buses"))
    ]
    if buses:
        lines += ["", *_table(["bus", "interface", *(h for _, h in _BUS_COLUMNS),
                               "last error"], buses)]
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            .rstrip() for row in [header, *rows]]


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and (key.endswith("_age") or key.endswith("_secs")):
        return _age(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _age(seconds: float) -> str:
    """0.4s, 12s, 5m03s, 3h12m, 2d04h: short and exact enough for a glance."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _clock_time(unix: float | None) -> str:
    return "?" if unix is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _tables(value: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(value, dict):
        return []
    return [(str(name), status) for name, status in value.items() if isinstance(status, dict)]
