"""When a site is occupied: its weekly opening hours in local time, minus the days it is closed.

One calendar per site (`Site.calendar`, JSON). Rollouts use it to stay out of occupied hours, and
building insight to tell occupied from unoccupied time (school days for ICONE, night and weekend
baseload, consumption per occupied hour). A site without one is taken to be occupied on weekdays,
08:00–18:00 Europe/Paris (`DEFAULT`), and insight says so in what it returns.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_END = time(23, 59, 59)  # how a span "until midnight" ends
MAX_DAYS_AHEAD = 366


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


TimeZone = Annotated[str, AfterValidator(_known_zone)]  # an IANA zone name, e.g. Europe/Paris


class Span(BaseModel):
    """[start, end) local time within one day; "24:00" is written as end "23:59:59" (DAY_END).

    Times are wall-clock: a span 08:00–18:00 is 08:00–18:00 on the days clocks change too (10 h of
    wall time, 9 or 11 h of real time if the change falls inside it: subtract in UTC for durations)."""

    model_config = ConfigDict(extra="forbid")

    start: time
    end: time

    @model_validator(mode="after")
    def _ordered(self) -> Span:
        if self.end <= self.start:
            raise ValueError(f"a span ends after it starts (got {self.start}–{self.end})")
        return self


class Closure(BaseModel):
    """Days the site is closed whatever its weekly hours say: holidays, bank holidays (inclusive)."""

    model_config = ConfigDict(extra="forbid")

    start: date
    end: date
    name: str = Field("", max_length=64)

    @model_validator(mode="after")
    def _ordered(self) -> Closure:
        if self.end < self.start:
            raise ValueError(f"a closure ends on or after its first day (got {self.start}–{self.end})")
        return self


class Calendar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tz: TimeZone = "Europe/Paris"
    week: dict[Annotated[str, Field(pattern="^(mon|tue|wed|thu|fri|sat|sun)$")], list[Span]] = Field(
        default_factory=dict
    )
    closed: list[Closure] = Field(default_factory=list)

    @model_validator(mode="after")
    def _spans_apart(self) -> Calendar:
        for day, spans in self.week.items():
            ordered = sorted(spans, key=lambda s: s.start)
            for a, b in zip(ordered, ordered[1:], strict=False):
                if b.start < a.end:
                    raise ValueError(f"{day}: spans {a.start}–{a.end} and {b.start}–{b.end} overlap")
            self.week[day] = ordered
        return self

    def is_closed(self, day: date) -> bool:
        return any(c.start <= day <= c.end for c in self.closed)

    def spans(self, day: date) -> list[tuple[datetime, datetime]]:
        """The occupied intervals of a local calendar day, as aware datetimes in the site's zone."""
        if self.is_closed(day):
            return []
        zone = ZoneInfo(self.tz)
        return [
            (datetime.combine(day, s.start, zone), datetime.combine(day, s.end, zone))
            for s in self.week.get(DAYS[day.weekday()], [])
        ]

    def occupied_at(self, when: datetime) -> bool:
        local = when.astimezone(ZoneInfo(self.tz))
        return any(start <= local < end for start, end in self.spans(local.date()))

    def day_bounds(self, day: date) -> tuple[datetime, datetime]:
        """Local midnight to the next one, aware: 23 or 25 hours apart on the days clocks change."""
        zone = ZoneInfo(self.tz)
        start = datetime.combine(day, time(), zone)
        return start, datetime.combine(day + timedelta(days=1), time(), zone)

    def occupied_hours(self, day: date) -> float:
        return sum((end - start).total_seconds() for start, end in _utc(self.spans(day))) / 3600

    def occupied_until(self, when: datetime) -> datetime | None:
        """The end of the occupied time `when` falls in, in the site's zone (spans that meet, across
        midnight too, count as one); None when the site is free at `when`."""
        t, until = when.astimezone(ZoneInfo(self.tz)), None
        for _ in range(MAX_DAYS_AHEAD * 4):  # bounded: a site occupied day and night has no end
            end = next((e for s, e in self.spans(t.date()) if s <= t < e), None)
            if end is None:
                return until
            until = t = end
            if end.time() == DAY_END:  # "until 24:00": it goes on if the next day starts at 00:00
                t = datetime.combine(end.date() + timedelta(days=1), time(0), end.tzinfo)
        return until

    def summary(self) -> str:
        """One line for a diff or a log: the zone, the weekly spans, the closures."""
        spans = sum(len(v) for v in self.week.values())
        return f"{self.tz}, {spans} weekly spans on {len(self.week)} days, {len(self.closed)} closures"

    def occupied_days(self, first: date, last: date) -> list[date]:
        """The days in [first, last] with at least one occupied span (school days, for a school)."""
        out, day = [], first
        while day <= last:
            if self.spans(day):
                out.append(day)
            day += timedelta(days=1)
        return out


def _utc(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Aware local spans in UTC: a difference of two datetimes of one zone is wall-clock time in
    Python, so durations across a clock change are taken in UTC."""
    return [(a.astimezone(UTC), b.astimezone(UTC)) for a, b in spans]


WORKING_DAY = [Span(start=time(8), end=time(18))]
DEFAULT = Calendar(week={day: WORKING_DAY for day in DAYS[:5]})
DEFAULT_NAME = "default: Mon–Fri 08:00–18:00 Europe/Paris, no closures"


def of(raw: dict | None) -> Calendar | None:
    """The calendar stored on a site, or None when the site has none."""
    return None if raw is None else Calendar.model_validate(raw)


def effective(raw: dict | None) -> tuple[Calendar, str]:
    """The calendar insight uses for a site and where it comes from ("site" or the default's name)."""
    found = of(raw)
    return (DEFAULT, DEFAULT_NAME) if found is None else (found, "site")
