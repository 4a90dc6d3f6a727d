"""When a site is occupied: its weekly opening hours in local time, minus the days it is closed.

One calendar per site (`Site.calendar`, JSON). Rollouts use it to stay out of occupied hours, and
building insight to tell occupied from unoccupied time (school days for ICONE, night and weekend
baseload, consumption per occupied hour).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Span(BaseModel):
    """[start, end) local time within one day; "24:00" is written as end "23:59:59"."""

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

    tz: str = "Europe/Paris"
    week: dict[Annotated[str, Field(pattern="^(mon|tue|wed|thu|fri|sat|sun)$")], list[Span]] = Field(
        default_factory=dict
    )
    closed: list[Closure] = Field(default_factory=list)

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

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

    def occupied_days(self, first: date, last: date) -> list[date]:
        """The days in [first, last] with at least one occupied span (school days, for a school)."""
        out, day = [], first
        while day <= last:
            if self.spans(day):
                out.append(day)
            day += timedelta(days=1)
        return out


def of(raw: dict | None) -> Calendar | None:
    """The calendar stored on a site, or None when the site has none."""
    return None if raw is None else Calendar.model_validate(raw)
