"""The status file and `canbridge status`: paths, atomic writes, the report, exit codes."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import canbridge_cmd, subprocess_env

from canbridge import status
from canbridge.cli import main
from canbridge.status import (
    default_status_path,
    format_report,
    health_problems,
    status_command,
    write_status,
)


def sample(now: float, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": "0.1.0", "pipeline": "battery", "file": "/etc/canbridge/pipeline.toml",
        "pid": os.getpid(), "state": "running", "clock": "live", "started_at": now - 11000.0,
        "written_at": now - 1.25, "every_secs": 2.0, "pipeline_time": 11000.0,
        "engine": {"frames": 123456, "updates": 2345, "errors": 1},
        "components": {
            "lynk": {"kind": "source", "type": "discover-lynk2", "state": "ok",
                     "frames_in": 120034, "frames_out": 0, "errors": 0, "last_seen_age": 0.213,
                     "stale_secs": 0.0},
            "balancing": {"kind": "transform", "type": "cell-balancing", "state": "ok",
                          "errors": 0, "balancing": False},
            "inverter": {"kind": "sink", "type": "pylontech", "state": "ok", "frames_in": 0,
                         "frames_out": 5400, "errors": 0, "last_seen_age": 0.5,
                         "safety": "normal", "inverter_alive": True,
                         "inverter_last_seen_age": 0.8},
        },
        "buses": {
            "battery": {"interface": "socketcan", "channel": "can0", "state": "ok",
                        "frames_in": 120034, "frames_out": 0, "frames_suppressed": 0,
                        "send_errors": 0, "reopens": 0, "last_error": None},
            "inverter": {"interface": "socketcan", "channel": "can1", "state": "ok",
                         "frames_in": 99, "frames_out": 5400, "frames_suppressed": 0,
                         "send_errors": 17, "reopens": 2, "last_error": "No buffer space"},
        },
    }
    doc.update(changes)
    return doc


def run_status(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    file = pipeline = None
    as_json = "--json" in args
    rest = [a for a in args if a != "--json"]
    if rest and rest[0] == "--file":
        file = rest[1]
    elif rest:
        pipeline = rest[0]
    return status_command(file, pipeline, as_json, out), out.getvalue()


# -- where the file is --------------------------------------------------------------------

def test_default_path_is_the_runtime_directory_when_writable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status, "RUN_DIR", tmp_path / "run")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    (tmp_path / "run").mkdir()
    assert default_status_path() == tmp_path / "run" / "status.json"
    (tmp_path / "run").rmdir()
    assert default_status_path() == tmp_path / "xdg" / "canbridge" / "status.json"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_status_path() == Path(tempfile.gettempdir()) / f"canbridge-{os.getuid()}" / (
        "status.json")


def test_the_operator_reads_the_services_file_they_could_not_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    monkeypatch.setattr(status, "RUN_DIR", run)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    real_access = os.access
    monkeypatch.setattr(status.os, "access",
                        lambda p, mode: False if Path(p) == run else real_access(p, mode))
    write_status(run / "status.json", sample(time.time()))
    assert default_status_path() == tmp_path / "xdg" / "canbridge" / "status.json"
    code, out = run_status()
    assert code == 0 and out.startswith("canbridge 0.1.0: pipeline battery")


# -- writing ------------------------------------------------------------------------------

def test_write_status_is_atomic_readable_and_creates_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "status.json"
    write_status(path, {"state": "running", "odd": Path("/x"), "n": 1.5})
    assert json.loads(path.read_text()) == {"state": "running", "odd": "/x", "n": 1.5}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_status(str(path), {"state": "stopped"})
    assert json.loads(path.read_text()) == {"state": "stopped"}
    assert os.listdir(path.parent) == ["status.json"]  # no temp file left behind


def test_write_status_raises_and_leaves_nothing_when_it_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_status(path, {"state": "running"})
    with pytest.raises(TypeError):
        write_status(path, {"state": "running", 1j: "a key JSON cannot hold"})  # type: ignore
    assert json.loads(path.read_text()) == {"state": "running"}
    assert os.listdir(tmp_path) == ["status.json"]
    (tmp_path / "blocker").write_text("")
    with pytest.raises(OSError):
        write_status(tmp_path / "blocker" / "status.json", {})
    (tmp_path / "taken" / "by-a-folder").mkdir(parents=True)  # the rename itself fails
    with pytest.raises(OSError):
        write_status(tmp_path / "taken", {})
    assert sorted(os.listdir(tmp_path)) == ["blocker", "status.json", "taken"]


# -- the report ---------------------------------------------------------------------------

def test_report_lists_components_and_buses() -> None:
    now = 1_745_500_000.0
    doc = sample(now, pid=1234)
    doc["components"]["inverter"].update(state="safe", safety="stale", inverter_alive=False,
                                         inverter_last_seen_age=None)
    assert format_report(doc, now) == (
        "canbridge 0.1.0: pipeline battery (/etc/canbridge/pipeline.toml), pid 1234, running, "
        "live clock\n"
        "up 3h03m, status written 1.2s ago, engine: frames 123456, updates 2345, errors 1\n"
        "\n"
        "component  type            state  in      out   errors  seen  details\n"
        "lynk       discover-lynk2  ok     120034  0     0       0.2s  stale_secs=0.0s\n"
        "balancing  cell-balancing  ok     -       -     0       -     balancing=no\n"
        "inverter   pylontech       safe   0       5400  0       0.5s  safety=stale "
        "inverter_alive=no inverter_last_seen_age=-\n"
        "\n"
        "bus       interface       state  in      out   dry-run  send errors  reopens  "
        "last error\n"
        "battery   socketcan can0  ok     120034  0     0        0            0\n"
        "inverter  socketcan can1  ok     99      5400  0        17           2        "
        "No buffer space\n"
    )


def test_report_of_a_minimal_document() -> None:
    assert format_report({"state": "running"}, 0.0) == (
        "canbridge ?: pipeline ? (?), pid ?, running, ? clock\n\n")


def test_report_details_show_numbers_short_and_lists_as_compact_json() -> None:
    doc = {"state": "running", "components": {"cells": {
        "state": "ok", "soc": 97.254321, "cell_volts": [3.3, 3.305], "limits": {"charge": 0.0}}}}
    assert format_report(doc, 0.0).splitlines()[-1] == (
        'cells      ?     ok     -   -    -       -     soc=97.2543 cell_volts=[3.3,3.305] '
        'limits={"charge":0.0}')


@pytest.mark.parametrize(("seconds", "text"), [
    (0.04, "0.0s"), (9.96, "10.0s"), (10.0, "10s"), (59.9, "59s"), (60, "1m00s"),
    (3599, "59m59s"), (3600, "1h00m"), (86399, "23h59m"), (86400, "1d00h"), (90000, "1d01h"),
    (-3, "0.0s")])
def test_ages(seconds: float, text: str) -> None:
    assert status._age(seconds) == text


# -- exit codes ---------------------------------------------------------------------------

def test_healthy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_status(tmp_path / "s.json", sample(time.time()))
    code, out = run_status("--file", str(tmp_path / "s.json"))
    assert code == 0
    assert "lynk       discover-lynk2  ok" in out
    assert capsys.readouterr().err == ""


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_status("--file", str(tmp_path / "nope.json"))
    assert (code, out) == (1, "")
    assert capsys.readouterr().err == (
        f"no status file at {tmp_path / 'nope.json'}: is canbridge running?\n")


def test_a_status_file_that_cannot_be_read(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s.json").mkdir()
    assert run_status("--file", str(tmp_path / "s.json")) == (1, "")
    assert capsys.readouterr().err == (
        f"cannot read status file {tmp_path / 's.json'}: Is a directory\n")


def test_garbage_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s.json").write_text("[1, 2]")
    assert run_status("--file", str(tmp_path / "s.json")) == (1, "")
    assert capsys.readouterr().err == (
        f"status file {tmp_path / 's.json'} is not valid: not a JSON object\n")
    (tmp_path / "s.json").write_text("[" * 100_000 + "]" * 100_000)
    assert run_status("--file", str(tmp_path / "s.json")) == (1, "")
    assert capsys.readouterr().err == (
        f"status file {tmp_path / 's.json'} is not valid: nested too deeply\n")


def test_a_file_not_rewritten_in_time_means_stuck_or_down(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    write_status(tmp_path / "s.json", sample(now, written_at=now - 9.0))  # < 10 s: fine
    assert run_status("--file", str(tmp_path / "s.json"))[0] == 0
    write_status(tmp_path / "s.json", sample(now, written_at=now - 125.0))
    code, out = run_status("--file", str(tmp_path / "s.json"))
    assert code == 1
    assert "status written 2m05s ago" in out  # the last known state is still shown
    assert capsys.readouterr().err == (
        f"status file {tmp_path / 's.json'} was last written 2m05s ago (every 2 s expected): "
        f"canbridge (pid {os.getpid()}) is stuck or down\n")
    # A slow status period stretches the limit to three periods.
    write_status(tmp_path / "s.json", sample(now, written_at=now - 25.0, every_secs=10.0))
    assert run_status("--file", str(tmp_path / "s.json"))[0] == 0


def test_stale_means_older_than_three_periods_and_never_under_ten_seconds() -> None:
    now = 1_745_500_000.0
    for every, limit in ((2.0, 10.0), (5.0, 15.0)):
        doc = sample(now, written_at=now - limit, every_secs=every)
        assert health_problems(doc, now, "s.json") == []
        doc["written_at"] -= 0.01
        assert health_problems(doc, now, "s.json") == [
            f"status file s.json was last written {limit:.0f}s ago (every {every:g} s "
            f"expected): canbridge (pid {os.getpid()}) is stuck or down"]
    doc = sample(now, written_at=now - 30.0)
    del doc["every_secs"]  # a document from before the field: the option's default, 10 s
    assert health_problems(doc, now, "s.json") == []
    doc["written_at"] -= 0.01
    assert len(health_problems(doc, now, "s.json")) == 1


def test_a_document_without_its_written_time_is_not_healthy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = sample(time.time())
    del doc["written_at"]
    write_status(tmp_path / "s.json", doc)
    assert run_status("--file", str(tmp_path / "s.json"))[0] == 1
    assert capsys.readouterr().err == f"status file {tmp_path / 's.json'} has no written_at time\n"


def test_a_process_that_died_without_a_word(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_status(tmp_path / "s.json", sample(time.time(), pid=dead.pid))
    assert run_status("--file", str(tmp_path / "s.json"))[0] == 1
    assert capsys.readouterr().err == (
        f"canbridge (pid {dead.pid}) is not running: it ended without writing its final status "
        "(killed or crashed)\n")


def test_a_stopped_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = time.mktime((2025, 4, 24, 12, 30, 5, 0, 0, -1))
    write_status(tmp_path / "s.json", sample(written, state="stopped", written_at=written))
    code, _ = run_status("--file", str(tmp_path / "s.json"))
    assert code == 1
    assert capsys.readouterr().err == (
        "canbridge is not running: pipeline battery stopped at 2025-04-24 12:30:05\n")


def test_unhealthy_components_and_buses(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    doc = sample(time.time())
    doc["components"]["inverter"]["state"] = "safe"
    doc["components"]["lynk"]["state"] = "stale"
    doc["buses"]["inverter"].update(state="reopening", last_error="Network is down")
    write_status(tmp_path / "s.json", doc)
    assert run_status("--file", str(tmp_path / "s.json"))[0] == 1
    assert capsys.readouterr().err == (
        "component lynk is stale\ncomponent inverter is safe\n"
        "bus inverter is reopening (Network is down)\n")


def test_json_prints_the_document_and_keeps_problems_on_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = sample(time.time())
    doc["components"]["balancing"]["state"] = "error"
    write_status(tmp_path / "s.json", doc)
    code, out = run_status("--file", str(tmp_path / "s.json"), "--json")
    assert code == 1
    assert json.loads(out) == doc
    assert out.endswith("}\n")
    assert capsys.readouterr().err == "component balancing is error\n"


def test_the_pipelines_status_file_relative_to_its_folder(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    pipeline = tmp_path / "etc" / "pipeline.toml"
    pipeline.write_text('[status]\nfile = "run/here.json"\nevery_secs = 5\n')
    write_status(tmp_path / "etc" / "run" / "here.json", sample(time.time()))
    code, out = run_status(str(pipeline))
    assert code == 0 and "pipeline battery" in out
    # --file wins over the pipeline's
    code, _ = run_status("--file", str(tmp_path / "none.json"))
    assert code == 1


def test_a_pipeline_without_a_status_file_uses_the_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status, "RUN_DIR", tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "p.toml").write_text('[pipeline]\nname = "x"\n')
    write_status(tmp_path / "run" / "status.json", sample(time.time()))
    assert run_status(str(tmp_path / "p.toml"))[0] == 0


def test_a_broken_pipeline_file_is_a_usage_error(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.toml").write_text("[status\n")
    assert run_status(str(tmp_path / "p.toml"))[0] == 2
    assert capsys.readouterr().err.startswith(f"canbridge status: {tmp_path / 'p.toml'}: ")
    (tmp_path / "p.toml").write_text("[status]\nfile = 3\n")
    assert run_status(str(tmp_path / "p.toml"))[0] == 2
    assert capsys.readouterr().err == (
        f"canbridge status: {tmp_path / 'p.toml'}: [status] file: expected a path\n")
    assert run_status(str(tmp_path / "missing.toml"))[0] == 2


def test_cli_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_status(tmp_path / "s.json", sample(time.time()))
    assert main(["status", "--file", str(tmp_path / "s.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pipeline"] == "battery"


def test_a_running_pipeline_end_to_end(tmp_path: Path) -> None:
    """`canbridge run` writes the file; `canbridge status` reads it, then sees it stop."""
    pipeline = tmp_path / "pipe.toml"
    pipeline.write_text(
        '[pipeline]\nname = "e2e"\n'
        '[status]\nfile = "state/status.json"\nevery_secs = 0.2\n'
        '[sources.ticker]\ntype = "test-ticker"\nperiod = 0.05\n'
        '[sinks.wedge]\ntype = "test-wedge"\ninputs = ["ticker"]\nafter = 1000000\n')
    status_file = tmp_path / "state" / "status.json"
    proc = subprocess.Popen([*canbridge_cmd("run", str(pipeline), "--duration", "2")],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 10
        doc: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if status_file.exists():
                doc = json.loads(status_file.read_text())
                if doc["components"]["ticker"].get("ticks", 0) >= 3:
                    break
            time.sleep(0.05)
        code, out = run_status(str(pipeline))
        assert code == 0, out
        assert doc["pipeline"] == "e2e" and doc["pid"] == proc.pid
        assert "ticker     test-ticker  ok" in out
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.communicate()
    code, _ = run_status(str(pipeline))
    assert code == 1
    assert json.loads(status_file.read_text())["state"] == "stopped"


def test_the_shared_tmp_status_folder_is_private_and_a_foreign_one_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from canbridge.status import default_status_path, write_status

    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path / "ours"))
    (tmp_path / "ours").mkdir()
    path = default_status_path()
    write_status(path, {"state": "running"})
    assert path.parent.stat().st_mode & 0o777 == 0o700
    # Another user got there first and left the folder open to all: refused.
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path / "shared"))
    planted = tmp_path / "shared" / f"canbridge-{os.getuid()}"
    planted.mkdir(parents=True)
    planted.chmod(0o777)
    with pytest.raises(OSError, match="is not a private folder of user id"):
        write_status(default_status_path(), {"state": "running"})
    assert not (planted / "status.json").exists()
    # A folder named in the pipeline is the owner's choice: written as it is.
    write_status(tmp_path / "shared" / "mine" / "status.json", {"state": "running"})
