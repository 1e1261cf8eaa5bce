"""The vocabulary's update semantics: an alarm report replaces the previous one whole."""

from __future__ import annotations

from canbridge import LatestValues, TimedValues, Update, is_condition


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
