"""The vocabulary's update semantics: an alarm report replaces the previous one whole."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from canbridge import LatestValues, TimedValues, Update, is_condition
from canbridge.signals import CONDITION_NAMES


def test_an_alarm_report_replaces_the_previous_one_whole() -> None:
    latest = TimedValues()
    latest.apply(Update(1.0, {"voltage": 53.5, "alarm_general": True, "warning_low_voltage": True,
                              "alarm_report": "received"}))
    # Not mentioned by the next report: "not supported" now, so no longer active.
    latest.apply(Update(2.0, {"alarm_high_voltage": False, "alarm_report": "received"}))
    assert latest.snapshot() == {"voltage": 53.5, "alarm_high_voltage": False,
                                 "alarm_report": "received"}
    assert latest.updated_at("voltage") == 1.0


def test_an_update_without_a_report_changes_only_what_it_carries() -> None:
    latest = LatestValues()
    latest.apply(Update(1.0, {"alarm_general": True, "alarm_report": "received"}))
    latest.apply(Update(2.0, {"warning_low_voltage": True}))
    assert latest.snapshot() == {"alarm_general": True, "alarm_report": "received",
                                 "warning_low_voltage": True}


def test_alarm_report_itself_is_not_a_condition() -> None:
    assert is_condition("alarm_general") and is_condition("warning_internal")
    assert not is_condition("alarm_report") and not is_condition("soc")


def test_updates_are_equal_when_their_time_and_values_are() -> None:
    update = Update(1.5, {"soc": 72, "alarm_general": False})
    assert update == Update(1.5, {"alarm_general": False, "soc": 72})
    assert update != Update(2.5, {"soc": 72, "alarm_general": False})
    assert update != Update(1.5, {"soc": 73, "alarm_general": False})
    assert update != (1.5, {"soc": 72, "alarm_general": False})
    assert repr(update) == "Update(1.5, {'soc': 72, 'alarm_general': False})"
    assert update.with_values({"soc": 73}) == Update(1.5, {"soc": 73, "alarm_general": False})


NAMES = ("voltage", "soc", "alarm_general", "alarm_high_voltage", "warning_low_voltage",
         "alarm_custom", "alarm_report")
UPDATES = st.lists(st.dictionaries(st.sampled_from(NAMES), st.booleans(), min_size=1,
                                   max_size=5), max_size=30)


@given(UPDATES)
def test_timed_values_follow_the_update_semantics_whatever_the_updates(
        updates: list[dict[str, bool]]) -> None:
    """The view's quick path for updates without alarms changes nothing of the semantics:
    a report forgets what the previous one set, an alarm of the vocabulary outside a report
    is tracked, every value carries the time of its last update."""
    latest = TimedValues()
    values: dict[str, object] = {}
    times: dict[str, float] = {}
    conditions: set[str] = set()
    for ts, update in enumerate(updates):
        latest.apply(Update(float(ts), update))
        named = {name for name in update if is_condition(name)}
        if "alarm_report" in update:
            for name in conditions - update.keys():
                del values[name], times[name]
            conditions = named
        elif not CONDITION_NAMES.isdisjoint(update):
            conditions |= named
        values.update(update)
        times.update(dict.fromkeys(update, float(ts)))
    assert latest.snapshot() == values
    assert (sorted(latest), len(latest)) == (sorted(values), len(values))
    assert all(name in latest for name in values) and "nothing" not in latest
    assert {name: latest.updated_at(name) for name in NAMES} == {
        name: times.get(name) for name in NAMES}
    assert latest.active_conditions() == {name for name in conditions if values[name] is True}
    assert latest.last_update == (float(len(updates) - 1) if updates else None)
