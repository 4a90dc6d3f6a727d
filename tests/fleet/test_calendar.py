"""Site calendars: what a calendar accepts, when a site is occupied, and the default for a site
without one (building insight states which it used)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from fleet import calendar
from fleet.calendar import Calendar

SCHOOL = {
    "tz": "Europe/Paris",
    "week": {
        "mon": [{"start": "13:30", "end": "16:30"}, {"start": "08:30", "end": "11:30"}],
        "wed": [{"start": "08:30", "end": "11:30"}],
    },
    "closed": [{"start": "2026-02-16", "end": "2026-02-20", "name": "vacances d'hiver"}],
}


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ({"week": {"mon": [{"start": "10:00", "end": "09:00"}]}}, "ends after it starts"),
        (
            {"week": {"mon": [{"start": "08:00", "end": "12:00"}, {"start": "11:00", "end": "13:00"}]}},
            "overlap",
        ),
        ({"tz": "Europe/Metz"}, "unknown time zone"),
        ({"closed": [{"start": "2026-02-20", "end": "2026-02-16"}]}, "ends on or after"),
        ({"week": {"monday": []}}, "pattern"),
        ({"hours": {}}, "Extra inputs"),
    ],
)
def test_bad_calendars_are_refused_with_the_reason(raw, error):
    with pytest.raises(ValidationError, match=error):
        Calendar.model_validate(raw)


def test_spans_are_ordered_and_closures_empty_a_day():
    cal = Calendar.model_validate(SCHOOL)
    monday = cal.spans(date(2026, 3, 9))
    assert [(a.time(), b.time()) for a, b in monday] == [
        (time(8, 30), time(11, 30)),
        (time(13, 30), time(16, 30)),
    ]
    assert monday[0][0].utcoffset().total_seconds() == 3600  # local time, CET in March
    assert cal.spans(date(2026, 2, 16)) == []  # a Monday of the winter holidays
    assert cal.spans(date(2026, 3, 10)) == []  # a Tuesday: no hours
    assert cal.occupied_days(date(2026, 2, 16), date(2026, 3, 1)) == [date(2026, 2, 23), date(2026, 2, 25)]


def test_occupied_at_is_start_inclusive_end_exclusive_in_the_sites_zone():
    cal = Calendar.model_validate(SCHOOL)
    paris_0830 = datetime(2026, 3, 9, 7, 30, tzinfo=UTC)  # 08:30 CET
    assert cal.occupied_at(paris_0830)
    assert not cal.occupied_at(datetime(2026, 3, 9, 7, 29, 59, tzinfo=UTC))
    assert not cal.occupied_at(datetime(2026, 3, 9, 10, 30, tzinfo=UTC))  # 11:30 CET: the end
    assert cal.occupied_at(datetime(2026, 3, 9, 12, 45, tzinfo=UTC))


def test_hours_and_day_bounds_follow_clock_changes():
    cal = Calendar.model_validate(
        {"tz": "Europe/Paris", "week": {"sun": [{"start": "01:00", "end": "04:00"}]}}
    )
    spring = date(2026, 3, 29)  # 02:00 → 03:00 in Paris
    start, end = cal.day_bounds(spring)
    assert (start.hour, end.date(), end.timestamp() - start.timestamp()) == (0, date(2026, 3, 30), 23 * 3600)
    assert cal.occupied_hours(spring) == 2  # 01:00–04:00 wall clock is two real hours that night
    assert cal.occupied_hours(date(2026, 3, 22)) == 3
    assert cal.occupied_hours(date(2026, 3, 23)) == 0


def test_a_site_without_calendar_gets_the_stated_default():
    cal, source = calendar.effective(None)
    assert (cal, source) == (calendar.DEFAULT, calendar.DEFAULT_NAME)
    assert source == "default: Mon–Fri 08:00–18:00 Europe/Paris, no closures"
    assert [cal.occupied_hours(date(2026, 3, d)) for d in range(9, 16)] == [10, 10, 10, 10, 10, 0, 0]
    own, source = calendar.effective(SCHOOL)
    assert source == "site" and own == Calendar.model_validate(SCHOOL)
    assert calendar.of(None) is None
    assert Calendar.model_validate(own.model_dump(mode="json")) == own  # as stored in Site.calendar


def test_occupied_until_joins_spans_that_meet_across_midnight():
    night = {"start": "20:00", "end": "23:59:59"}
    cal = Calendar.model_validate(
        {
            "tz": "Europe/Paris",
            "week": {
                "mon": [{"start": "08:00", "end": "12:00"}, {"start": "12:00", "end": "14:00"}, night],
                "tue": [{"start": "00:00", "end": "06:00"}],
            },
        }
    )
    paris = ZoneInfo("Europe/Paris")
    until = cal.occupied_until(datetime(2026, 3, 9, 9, 0, tzinfo=paris))
    assert until == datetime(2026, 3, 9, 14, 0, tzinfo=paris)  # 08–12 and 12–14 are one stretch
    assert cal.occupied_until(datetime(2026, 3, 9, 22, 0, tzinfo=paris)) == datetime(
        2026, 3, 10, 6, 0, tzinfo=paris
    )
    assert cal.occupied_until(datetime(2026, 3, 9, 15, 0, tzinfo=paris)) is None  # free at 15:00
    assert cal.summary() == "Europe/Paris, 4 weekly spans on 2 days, 0 closures"
