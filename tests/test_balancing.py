"""cell-balancing on the virtual clock: due logic, exact hold length, early ends, restarts,
state file handling and option checks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from canbridge_plugins.balancing import CellBalancing
from canbridge_plugins.balancing.state import SavedState, iso, write_state
from canbridge_plugins.balancing.state import read_state as read_now
from hypothesis import given, settings
from hypothesis import strategies as st

from canbridge import ALARM_REPORT, REPORT_RECEIVED, Clock, Update, writer
from canbridge.cli import _load, main
from canbridge.locations import location_problem
from canbridge.registry import load_registry
from canbridge.testing import build, capture, run_timers

T0 = 1745512155.0  # 2025-04-24T16:29:15Z, the sample capture's first timestamp
DAY = 86400.0
HOLD = 35 * 60.0
LOGGER = "canbridge.under_test"


def options(tmp_path: Path, **extra: object) -> dict[str, object]:
    return {"inputs": ["lynk"], "state_file": str(tmp_path / "balancing.toml"), "every_days": 3,
            "hold_soc": 99, "hold_minutes": 35, **extra}


def make(tmp_path: Path, start: float = T0, **extra: object
         ) -> tuple[CellBalancing, list[Update], Clock]:
    clock = Clock(virtual=True, start=start)
    component = build(CellBalancing, options(tmp_path, **extra), clock=clock,
                      pipeline_dir=str(tmp_path))
    return component, capture(component), clock


def feed(component: CellBalancing, t: float, **values: object) -> None:
    """Fire the timers due up to `t`, then deliver one update at `t` (as the engine does)."""
    run_timers(component.clock, t)
    component.on_update(Update(t, values))


def ramp(component: CellBalancing, start: float, socs: list[float]) -> float:
    """One soc reading per second from `start`; returns the time after the last one."""
    for i, soc in enumerate(socs):
        feed(component, start + i, soc=soc)
    return start + len(socs)


def reported(out: list[Update]) -> dict[float, object]:
    return {u.timestamp: u.values["soc_reported"] for u in out if "soc" in u.values}


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= level]


def read_state(path: Path) -> SavedState:
    """The state file once the background writer has written what it was given."""
    assert writer.flush()
    return read_now(path)


def test_registered_as_a_transform_with_documented_defaults() -> None:
    registry = load_registry()
    cls = registry.types["cell-balancing"]
    assert cls is CellBalancing and cls.kind == "transform"
    defaults = {o.name: o.default for o in cls.options}
    assert defaults == {"every_days": 7.0, "hold_soc": 99.0, "hold_minutes": 60.0,
                        "state_file": "/var/lib/canbridge/balancing.toml",
                        "stale_after_secs": 5.0}
    assert all(o.help for o in cls.options)


def test_hold_lasts_exactly_hold_minutes_then_real_soc(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    balancing, out, _ = make(tmp_path)
    rise = T0 + 3
    ramp(balancing, T0, [97, 98, 99] + [100] * int(HOLD + 10))

    soc_out = reported(out)
    assert [soc_out[T0 + i] for i in range(3)] == [97, 98, 99]
    assert all(soc_out[t] == 99 for t in soc_out if rise <= t < rise + HOLD)
    assert all(soc_out[t] == 100 for t in soc_out if t >= rise + HOLD)
    assert sum(1 for v in soc_out.values() if v == 99) == 1 + HOLD  # the real 99 + the hold

    first = next(u for u in out if u.timestamp == rise)
    assert first.values["balancing_active"] is True
    assert first.values["balancing_remaining"] == HOLD
    assert first.values["balancing_next_due"] == iso(rise)  # never balanced: due now
    assert "balancing_last" not in first.values
    assert next(u for u in out if u.timestamp == rise + 100).values["balancing_remaining"] == (
        HOLD - 100)

    # completion is announced by a timer update at the exact end, before the next soc
    done = [u for u in out if "soc" not in u.values]
    assert done == [Update(rise + HOLD, {
        "soc_reported": 100, "balancing_active": False, "balancing_remaining": 0.0,
        "balancing_last": iso(rise + HOLD), "balancing_next_due": iso(rise + HOLD + 3 * DAY)})]
    after = next(u for u in out if u.timestamp == rise + HOLD and "soc" in u.values)
    assert after.values["soc_reported"] == 100 and after.values["balancing_active"] is False

    assert read_state(tmp_path / "balancing.toml") == SavedState(last_end=rise + HOLD)
    assert balancing.status() == {
        "state": "idle", "balancing": "idle", "balancing_last": "2025-04-24T17:04:18+00:00",
        "next_due": "2025-04-27T17:04:18+00:00", "remaining": 0.0,
        "updates_in": 3 + int(HOLD + 10), "stale_secs": 0.0, "errors": 0}
    assert messages(caplog) == [
        "cell balancing: last balanced never, next due 2025-04-24T16:29:15+00:00, "
        f"state file {tmp_path / 'balancing.toml'}",
        "balancing hold started: SOC 100 % rose above 99 %; reporting at most 99 % for 35.0 min",
        "balancing hold completed at 2025-04-24T17:04:18+00:00; next due "
        "2025-04-27T17:04:18+00:00"]


def test_every_signal_passes_through_and_non_soc_updates_are_untouched(tmp_path: Path) -> None:
    balancing, out, _ = make(tmp_path)
    limits = Update(T0, {"charge_voltage_limit": 55.9, "charge_current_limit": 282.0})
    balancing.on_update(limits)
    feed(balancing, T0, soc=72.0, soh=100.0)
    assert out[0] is limits
    assert out[1].values == {"soc": 72.0, "soh": 100.0, "soc_reported": 72.0,
                             "balancing_active": False, "balancing_remaining": 0.0,
                             "balancing_next_due": iso(T0)}


def test_first_reading_above_hold_soc_after_start_counts_as_a_rise(tmp_path: Path) -> None:
    balancing, out, _ = make(tmp_path)
    feed(balancing, T0, soc=100)
    assert out[-1].values["soc_reported"] == 99 and balancing.status()["state"] == "holding"


@pytest.mark.parametrize(("every_days", "hold_days"), [(3, [0, 4, 8]), (2.9, [0, 3, 6])])
def test_due_counts_from_the_end_of_the_last_completed_hold(
        tmp_path: Path, every_days: float, hold_days: list[int]) -> None:
    """A daily charge crosses 99 % at the same time each day: with every_days = 3 the third
    day's rise comes 5 min before the 3 days since the last hold *ended*, so the next hold is
    on day 4; 2.9 days gives every third day."""
    balancing, out, _ = make(tmp_path, every_days=every_days, hold_minutes=5)
    for day in range(9):
        morning = T0 + day * DAY
        end = ramp(balancing, morning, [95] + [100] * 400)
        feed(balancing, end + 3600, soc=60)  # evening; the night's gap is stale data
    starts = [u.timestamp for u in out
              if u.values.get("balancing_remaining") == 300.0 and "soc" in u.values]
    assert starts == [T0 + d * DAY + 1 for d in hold_days]
    assert balancing.status()["balancing_last"] == iso(T0 + hold_days[-1] * DAY + 1 + 300)


def test_due_exactly_every_days_after_the_last_end(tmp_path: Path) -> None:
    last = T0 - 3 * DAY
    write_state(tmp_path / "balancing.toml", SavedState(last_end=last))
    balancing, out, _ = make(tmp_path, start=T0 - 10)
    assert balancing.status()["state"] == "idle"
    assert balancing.status()["next_due"] == iso(T0)
    feed(balancing, T0 - 3, soc=98)
    feed(balancing, T0 - 2, soc=100)  # a rise 2 s before it is due: nothing
    feed(balancing, T0 - 1, soc=98)
    assert balancing.status()["state"] == "idle"
    feed(balancing, T0, soc=100)  # due from this instant
    assert [u.values["soc_reported"] for u in out] == [98, 100, 98, 99]
    assert out[-1].values["balancing_last"] == iso(last)
    assert balancing.status()["state"] == "holding"


def test_second_rise_the_same_day_does_nothing(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    balancing, out, _ = make(tmp_path)
    end = ramp(balancing, T0, [98] + [100] * int(HOLD + 5))
    out.clear()
    ramp(balancing, end + 3600, [97, 98, 99, 100, 100])
    assert [u.values["soc_reported"] for u in out] == [97, 98, 99, 100, 100]
    assert not any(u.values["balancing_active"] for u in out)
    assert sum("hold started" in m for m in messages(caplog)) == 1
    assert read_state(tmp_path / "balancing.toml") == SavedState(last_end=T0 + 1 + HOLD)


def test_alarm_ends_the_hold_early_and_it_is_not_recorded(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    balancing, out, _ = make(tmp_path)
    end = ramp(balancing, T0, [98] + [100] * 600)
    assert read_state(tmp_path / "balancing.toml") == SavedState(hold_started=T0 + 1)
    feed(balancing, end, alarm_high_voltage=True, alarm_low_voltage=False)
    assert out[-1].values == {"alarm_high_voltage": True, "alarm_low_voltage": False,
                              "soc_reported": 100, "balancing_active": False,
                              "balancing_remaining": 0.0, "balancing_next_due": iso(end)}
    feed(balancing, end + 1, soc=100)
    assert out[-1].values["soc_reported"] == 100
    assert messages(caplog, logging.WARNING) == [
        "balancing hold ended early after 10.0 min, not counted as done: "
        "alarm_high_voltage active"]
    assert read_state(tmp_path / "balancing.toml") == SavedState()
    assert balancing.status()["state"] == "due"

    # no new hold while the alarm is on, even on a rise
    ramp(balancing, end + 2, [99, 100])
    assert out[-1].values["soc_reported"] == 100
    # the alarm clears: SOC already above, no rise, no hold
    feed(balancing, end + 4, alarm_high_voltage=False)
    assert out[-1].values == {"alarm_high_voltage": False}
    feed(balancing, end + 4, soc=100)
    assert out[-1].values["soc_reported"] == 100
    # the next rise starts a new hold of full length
    ramp(balancing, end + 5, [99, 100])
    assert out[-1].values["soc_reported"] == 99
    assert out[-1].values["balancing_remaining"] == HOLD


def test_stale_soc_ends_the_hold_early_on_the_clock(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    balancing, out, clock = make(tmp_path)
    last = ramp(balancing, T0, [98] + [100] * 100) - 1  # last soc at T0 + 100
    run_timers(clock, last + 4.999)
    assert balancing.status()["state"] == "holding"
    assert balancing.status()["stale_secs"] == 0.0
    run_timers(clock, last + 7)
    assert out[-1] == Update(last + 5, {"soc_reported": 100, "balancing_active": False,
                                        "balancing_remaining": 0.0,
                                        "balancing_next_due": iso(last + 5)})
    assert messages(caplog, logging.WARNING) == [
        "balancing hold ended early after 1.7 min, not counted as done: "
        "battery data stale (no soc for 5 s)"]
    assert read_state(tmp_path / "balancing.toml") == SavedState()
    assert balancing.status()["stale_secs"] == 2.0
    # data returns already above hold_soc: like start-up, that counts as a rise
    feed(balancing, last + 60, soc=100)
    assert out[-1].values["soc_reported"] == 99
    assert out[-1].values["balancing_remaining"] == HOLD


def test_stale_timer_follows_the_data_and_never_fires_while_it_flows(tmp_path: Path) -> None:
    balancing, out, clock = make(tmp_path, stale_after_secs=2.5)
    ramp(balancing, T0, [98] + [100] * 50)  # one reading a second keeps it fresh
    run_timers(clock, T0 + 50 + 2.5 - 0.001)
    assert balancing.status()["state"] == "holding"
    run_timers(clock, T0 + 60)
    assert out[-1].timestamp == T0 + 50 + 2.5 and out[-1].values["balancing_active"] is False


def test_restart_mid_hold_resumes_for_the_remaining_time(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    first, _, _ = make(tmp_path)
    ramp(first, T0, [98] + [100] * 600)
    first.stop()
    assert writer.flush()  # the engine does this at stop
    rise = T0 + 1

    restart = T0 + 900  # five minutes down
    second, out, _ = make(tmp_path, start=restart)
    assert second.status()["state"] == "holding"
    assert second.status()["remaining"] == HOLD - (restart - rise)
    assert "balancing hold resumed after a restart: 20.0 min left" in messages(caplog)
    ramp(second, restart, [100] * int(HOLD))
    soc_out = reported(out)
    assert all(soc_out[t] == 99 for t in soc_out if t < rise + HOLD)
    assert all(soc_out[t] == 100 for t in soc_out if t >= rise + HOLD)
    assert [u.timestamp for u in out if "soc" not in u.values] == [rise + HOLD]
    assert read_state(tmp_path / "balancing.toml") == SavedState(last_end=rise + HOLD)


def test_restart_after_the_hold_would_have_ended_completes_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    write_state(tmp_path / "balancing.toml", SavedState(last_end=T0 - 5 * DAY,
                                                        hold_started=T0 - HOLD - 3600))
    balancing, out, _ = make(tmp_path)
    assert read_state(tmp_path / "balancing.toml") == SavedState(last_end=T0 - 3600)
    assert balancing.status()["state"] == "idle"
    assert ("balancing hold completed while canbridge was stopped at "
            f"{iso(T0 - 3600)}; next due {iso(T0 - 3600 + 3 * DAY)}") in messages(caplog)
    ramp(balancing, T0, [98, 100])
    assert out[-1].values["soc_reported"] == 100
    assert out[-1].values["balancing_last"] == iso(T0 - 3600)


def test_resumed_hold_without_data_ends_when_stale(tmp_path: Path) -> None:
    write_state(tmp_path / "balancing.toml", SavedState(hold_started=T0 - 60))
    balancing, out, clock = make(tmp_path)
    run_timers(clock, T0 + 6)
    assert balancing.status()["state"] == "due"
    assert out == [Update(T0 + 5, {"balancing_active": False, "balancing_remaining": 0.0,
                                   "balancing_next_due": iso(T0 + 5)})]
    assert read_state(tmp_path / "balancing.toml") == SavedState()


def test_missing_file_means_never_balanced(tmp_path: Path) -> None:
    balancing, out, _ = make(tmp_path, start=T0 + 42)
    assert balancing.status()["state"] == "due"
    assert balancing.status()["balancing_last"] is None
    assert balancing.status()["next_due"] == iso(T0 + 42)
    feed(balancing, T0 + 43, soc=50)
    assert "balancing_last" not in out[-1].values
    assert out[-1].values["balancing_next_due"] == iso(T0 + 43)
    assert balancing.errors == 0
    assert not (tmp_path / "balancing.toml").exists()


@pytest.mark.parametrize("content", [
    b"\x00\xff\xfe binary",
    b"# canbridge\nversion = 1\nlast_balanced = 2025-04-",  # cut short
    b"",
    b"version = 2\nlast_balanced = 2025-04-24T16:29:15Z\n",
    b'version = 1\nlast_balanced = "yesterday"\n',
    b"version = 1\nlast_balanced = 2025-04-24T16:29:15\n",  # no offset
    b"version = 1\nhold = 3\n",
    b"version = 1\nx = " + b"[" * 5000 + b"]" * 5000 + b"\n",  # deeper than the parser recurses
])
def test_corrupt_file_is_reported_once_kept_aside_and_treated_as_missing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    path = tmp_path / "balancing.toml"
    path.write_bytes(content)
    balancing, out, _ = make(tmp_path)
    errors = messages(caplog, logging.ERROR)
    assert len(errors) == 1
    assert errors[0].startswith(f"balancing state file {path} is corrupt (")
    assert errors[0].endswith(f"moved to {path}.corrupt; treated as never balanced")
    assert (tmp_path / "balancing.toml.corrupt").read_bytes() == content
    assert not path.exists()
    assert balancing.status()["state"] == "due" and balancing.status()["errors"] == 1
    ramp(balancing, T0, [98, 100])
    assert out[-1].values["soc_reported"] == 99
    assert read_state(path) == SavedState(hold_started=T0 + 1)
    assert len(messages(caplog, logging.ERROR)) == 1


def test_state_file_round_trip_is_readable_toml(tmp_path: Path) -> None:
    path = tmp_path / "balancing.toml"
    write_state(path, SavedState(last_end=T0, hold_started=T0 + 3 * DAY + 0.25))
    assert path.read_text() == (
        "# canbridge cell-balancing state, rewritten by canbridge: delete the file to forget "
        "past balances\n"
        "version = 1\n"
        "last_balanced = 2025-04-24 16:29:15+00:00\n\n"
        "[hold]\n"
        "started = 2025-04-27 16:29:15.250000+00:00\n")
    assert read_state(path) == SavedState(T0, T0 + 3 * DAY + 0.25)


def test_relative_state_file_is_taken_from_the_pipeline_folder(tmp_path: Path) -> None:
    balancing, _, _ = make(tmp_path, state_file="state/balancing.toml")
    ramp(balancing, T0, [98, 100])
    assert read_state(tmp_path / "state" / "balancing.toml") == SavedState(hold_started=T0 + 1)


def test_unwritable_state_file_keeps_balancing_in_memory_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    balancing, out, _ = make(tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", refuse)
    ramp(balancing, T0, [98, 100, 100])
    assert [u.values["soc_reported"] for u in out] == [98, 99, 99]
    assert writer.flush()  # written (and failed) off the engine thread
    assert balancing.errors == 1
    assert messages(caplog, logging.ERROR) == [
        f"cannot write balancing state file {tmp_path / 'balancing.toml'}: [Errno 28] No space "
        "left on device (balancing goes on, but a restart forgets it)"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("make_path", "problem"), [
    (lambda tmp: Path("/sys/canbridge-test/balancing.toml"),
     "nearest existing directory /sys is not writable (Permission denied)"),
    (lambda tmp: tmp, "{tmp} is a directory, not a file"),
    (lambda tmp: tmp / "plain" / "balancing.toml", "{tmp}/plain is not a directory"),
])
def test_an_unwritable_location_is_named(tmp_path: Path, make_path, problem: str) -> None:
    (tmp_path / "plain").write_text("a file, not a folder")
    assert location_problem(make_path(tmp_path)) == problem.format(tmp=tmp_path)


def test_balancing_that_cannot_record_runs_without_holds_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A read-only SD card must never keep the inverter without frames: the updates pass,
    only no hold starts (it could not be remembered across a restart)."""
    (tmp_path / "plain").write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING):
        balancing, out, _ = make(tmp_path, state_file=str(tmp_path / "plain" / "b.toml"))
        ramp(balancing, T0, [98, 100, 100])
    assert [u.values["soc_reported"] for u in out] == [98, 100, 100]
    assert not balancing.holding
    assert balancing.status()["state"] == "degraded"
    assert (f"balancing will not start a hold it cannot record ({tmp_path}/plain is not a "
            "directory); the bridge goes on without balancing") in caplog.text
    with caplog.at_level(logging.WARNING):
        press_balance_now(balancing)
    assert not balancing.holding
    assert (f"balance now refused: the state file cannot be written ({tmp_path}/plain is not "
            "a directory)") in caplog.text


# -- the balance_now button (Home Assistant) ---------------------------------------------------


def press_balance_now(balancing: CellBalancing) -> None:
    board = balancing.context.controls
    board.command(board.get("balance_now").parse("PRESS"))


def test_balance_now_above_hold_soc_starts_a_hold_between_balances(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_state(tmp_path / "balancing.toml", SavedState(last_end=T0 - DAY))  # due in 2 days
    balancing, out, _ = make(tmp_path)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        feed(balancing, T0 + 1, soc=100)
        assert balancing.status()["state"] == "idle"
        press_balance_now(balancing)
        assert balancing.holding
        assert out[-1].values["soc_reported"] == 99
        ramp(balancing, T0 + 2, [100] * int(HOLD))
    assert messages(caplog)[-2:] == [
        "balancing hold started: balance now pressed at SOC 100 %; reporting at most 99 % "
        "for 35.0 min",
        f"balancing hold completed at {iso(T0 + 1 + HOLD)}; next due "
        f"{iso(T0 + 1 + HOLD + 3 * DAY)}"]
    assert balancing.status()["state"] == "idle"  # the press was used up


@pytest.mark.parametrize("alarm", [False, True], ids=["below hold_soc", "alarm active"])
def test_balance_now_that_cannot_start_a_hold_makes_balancing_due(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, alarm: bool) -> None:
    write_state(tmp_path / "balancing.toml", SavedState(last_end=T0 - DAY))
    balancing, _, _ = make(tmp_path)
    feed(balancing, T0 + 1, soc=100 if alarm else 90, alarm_general=alarm)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        press_balance_now(balancing)
    assert not balancing.holding
    assert balancing.status()["state"] == "due"
    assert messages(caplog) == [
        "balance now: balancing is due; the hold starts when the SOC rises above 99 %"]
    feed(balancing, T0 + 2, soc=90, alarm_general=False)
    feed(balancing, T0 + 3, soc=100)
    assert balancing.holding


def test_an_alarm_report_ends_the_hold_and_the_next_report_without_it_clears_it(
        tmp_path: Path) -> None:
    """As the LYNK II sends them: whole reports, each replacing the last."""
    balancing, _, _ = make(tmp_path)
    end = ramp(balancing, T0, [98, 100])
    assert balancing.holding
    feed(balancing, end, **{ALARM_REPORT: REPORT_RECEIVED, "alarm_high_voltage": True})
    assert not balancing.holding
    feed(balancing, end + 1, **{ALARM_REPORT: REPORT_RECEIVED, "alarm_low_voltage": False})
    ramp(balancing, end + 2, [98, 100])
    assert balancing.holding


def test_every_stale_episode_ends_a_hold(tmp_path: Path) -> None:
    balancing, _, clock = make(tmp_path)
    for episode in range(3):
        end = ramp(balancing, T0 + 100 * episode, [98, 100])
        assert balancing.holding, episode
        run_timers(clock, end + 10)  # no soc for 10 s: stale after 5
        assert not balancing.holding, episode


CHECK_AS_NOBODY = """
import os, sys
from pathlib import Path
from canbridge.locations import location_problem
if os.geteuid() == 0:  # root may write anywhere: look at it as an unprivileged service user
    os.setgid(65534)
    os.setuid(65534)
print(location_problem(Path(sys.argv[1])))
"""


def test_check_reports_a_directory_the_service_user_cannot_write() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        folder = Path(top) / "state"
        folder.mkdir(mode=0o555)
        os.chmod(top, 0o755)
        result = subprocess.run([sys.executable, "-c", CHECK_AS_NOBODY,
                                 str(folder / "balancing.toml")],
                                capture_output=True, text=True, check=True, timeout=30)
        assert result.stdout == f"directory {folder} is not writable (Permission denied)\n"


def test_a_folder_still_to_be_created_is_fine(tmp_path: Path) -> None:
    assert location_problem(tmp_path / "a" / "b" / "balancing.toml") is None


def test_option_ranges(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"hold_soc: 0 is out of range \(>= 1, <= 100\)"):
        make(tmp_path, hold_soc=0)
    with pytest.raises(ValueError, match=r"every_days: 0 is out of range \(> 0, <= 365\)"):
        make(tmp_path, every_days=0)
    with pytest.raises(ValueError, match=r"every_days: 1e\+07 is out of range \(> 0, <= 365\)"):
        make(tmp_path, every_days=1e7)  # "year 29404 is out of range" on every update, before
    with pytest.raises(ValueError, match=r"^hold_minutes: a hold of 1440 min is not shorter "
                                         r"than every_days \(1 days\)$"):
        make(tmp_path, every_days=1, hold_minutes=1440)


def test_pipeline_loader_resolves_and_checks_the_state_file(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(
        '[buses.battery]\ninterface = "virtual"\nchannel = "x"\n'
        '[sources.lynk]\ntype = "discover-lynk2"\nbus = "battery"\n'
        '[transforms.balancing]\ntype = "cell-balancing"\ninputs = ["lynk"]\n'
        'state_file = "state/balancing.toml"\n'
        '[sinks.console]\ntype = "console"\ninputs = ["balancing"]\n')
    config = _load(str(pipeline))
    assert config is not None
    spec = next(s for s in config.components if s.name == "balancing")
    assert spec.values["state_file"] == str(tmp_path / "state" / "balancing.toml")

    pipeline.write_text(pipeline.read_text().replace("state/balancing.toml",
                                                     "/sys/canbridge/balancing.toml"))
    assert main(["validate", str(pipeline)]) == 0  # a warning: the bridge runs without it


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.5, 1.0, 7.0, 400.0]),
                          st.integers(min_value=90, max_value=100), st.booleans()),
                min_size=1, max_size=60))
def test_hold_only_ever_lowers_the_reported_soc(steps: list[tuple[float, int, bool]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        balancing, out, _ = make(Path(folder), hold_minutes=5)
        t = T0
        for gap, soc, alarm in steps:
            t += gap
            feed(balancing, t, soc=soc, alarm_general=alarm)
        for update in out:
            if "soc" in update.values:
                soc, shown = update.values["soc"], update.values["soc_reported"]
                assert shown == (min(soc, 99) if update.values["balancing_active"] else soc)
                assert not (update.values["balancing_active"] and update.values["alarm_general"])
                assert 0 <= update.values["balancing_remaining"] <= 300
        assert writer.flush()  # before the folder goes


def test_the_state_file_is_written_off_the_engine_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stalled SD card must never hold up the engine (and with it the inverter's frames)."""
    import threading

    from canbridge import writer as writer_module

    threads: list[str] = []
    disk = threading.Event()
    real = writer_module.write_atomic

    def stalled(path: Path, text: str, mode: int = 0o640) -> None:
        threads.append(threading.current_thread().name)
        disk.wait(10)  # the disk stalls until the test lets it go
        real(path, text, mode)

    monkeypatch.setattr(writer_module, "write_atomic", stalled)
    balancing, out, _ = make(tmp_path)
    ramp(balancing, T0, [98, 100, 100])  # the hold starts: a state write is due
    assert balancing.holding and [u.values["soc_reported"] for u in out] == [98, 99, 99]
    disk.set()
    assert writer.flush()
    assert threads == ["canbridge-writer"]
    assert read_state(tmp_path / "balancing.toml") == SavedState(hold_started=T0 + 1)
