"""Air in each room while it is occupied: ICONE per school day and over a period, time above the
HCSP's 800 and 1500 ppm marks, and EN 16798-1 comfort categories for CO2 and temperature.

Everything is computed on the regulatory 10-minute step (fleet.insight.indices): the mean of the
1-minute rollups of each 10-minute slot that begins inside the site calendar's occupied spans, over
every sensor of the room; a slot without readings holds the previous value for up to the nodes'
heartbeat (report-on-change sends an unchanged level only that often). Minutes are 10 × slots.
800 ppm and 1500 ppm are the HCSP's (Haut Conseil de la santé publique, 2021) management mark and
rapid-action value for CO2 in buildings open to the public.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta

from pydantic import BaseModel
from sqlmodel import Session

from fleet.insight import data, indices
from fleet.insight.indices import CATEGORIES, Category

STEP = indices.ICONE_STEP_S
CO2_MARKS = (800.0, 1500.0)  # ppm
NAMES = ("co2", "temperature")


class AirDay(BaseModel):
    """One room on one school day (a day the calendar has occupied hours)."""

    building_id: int
    room_id: int
    room: str
    day: date
    calendar: str
    occupied_min: int  # the calendar's occupied minutes that day
    co2_values: int  # 10-minute CO2 values in occupied time (ICONE's N)
    icone: int | None
    icone_value: float | None
    icone_level: str | None
    f1: float | None
    f2: float | None
    co2_mean: float | None
    co2_max: float | None  # highest reading in occupied time
    min_above_800: int | None
    min_above_1500: int | None
    co2_cat_i_min: int | None  # EN 16798-1, CO2 above an outdoor level of `outdoor_ppm`
    co2_cat_ii_min: int | None
    co2_cat_iii_min: int | None
    co2_cat_iv_min: int | None
    season: str  # heating or cooling: which temperature ranges apply
    temperature_values: int
    temperature_mean: float | None
    temp_cat_i_min: int | None
    temp_cat_ii_min: int | None
    temp_cat_iii_min: int | None
    temp_cat_iv_min: int | None


class IconePeriod(BaseModel):
    """The regulatory reading: one ICONE per room over every school day of the period."""

    building_id: int
    room_id: int
    room: str
    first: date
    last: date
    calendar: str
    school_days: int  # school days with at least one CO2 value
    values: int
    icone: int | None
    icone_value: float | None
    icone_level: str | None
    f1: float | None
    f2: float | None


def _minutes(categories: list[Category]) -> list[int | None]:
    if not categories:
        return [None] * len(CATEGORIES)
    counts = Counter(categories)
    return [counts[c] * STEP // 60 for c in CATEGORIES]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class _RoomDay:
    """The 10-minute values of one room on one school day, and its highest CO2 reading."""

    co2: list[float]
    temperature: list[float]
    top: float | None


def _icone_fields(found: indices.Icone | None) -> dict:
    keys = ("icone", "icone_value", "icone_level", "f1", "f2")
    if found is None:
        return dict.fromkeys(keys)
    return dict(zip(keys, (found.index, found.value, found.level, found.f1, found.f2), strict=True))


def _room_days(session: Session, place: data.Place, first: date, last: date, room_ids: set[int] | None):
    """{(room id, day): _RoomDay} for the school days of [first, last] that have values."""
    cal = place.calendar
    school = [d for d in data.days(first, last, data.MAX_DAYS_MINUTES) if cal.spans(d)]
    out: dict[tuple[int, date], _RoomDay] = {}
    if not school:
        return out
    since, until = data.utc_day_range(cal, school[0], school[-1])
    for room_id, devices in sorted(place.devices.items()):
        if room_ids is not None and room_id not in room_ids:
            continue
        found = data.slots(session, devices, NAMES, "1m", since - timedelta(seconds=data.HOLD_S), until, STEP)
        for day in school:
            starts = data.span_slots(cal.spans(day), STEP)
            co2 = [(t, v) for t, v in found["co2"].levels(starts) if v is not None]
            temperature = [v for _, v in found["temperature"].levels(starts) if v is not None]
            if co2 or temperature:
                tops = [found["co2"].by_start[t].max for t, _ in co2 if t in found["co2"].by_start]
                out[room_id, day] = _RoomDay([v for _, v in co2], temperature, max(tops) if tops else None)
    return out


def air_days(
    session: Session,
    place: data.Place,
    first: date,
    last: date,
    *,
    room_ids: set[int] | None = None,
    outdoor_ppm: float = indices.OUTDOOR_CO2_PPM,
) -> list[AirDay]:
    """Per room and school day in [first, last] (local dates), for rooms with CO2 or temperature."""
    rows = []
    for (room_id, day), rd in sorted(_room_days(session, place, first, last, room_ids).items()):
        found = indices.icone(rd.co2)
        heating = indices.heating_season(day)
        above = [sum(1 for v in rd.co2 if v > mark) * STEP // 60 if rd.co2 else None for mark in CO2_MARKS]
        co2_min = _minutes([indices.co2_category(v, outdoor_ppm) for v in rd.co2])
        temp_min = _minutes([indices.temperature_category(v, heating) for v in rd.temperature])
        rows.append(
            AirDay(
                building_id=place.building.id,
                room_id=room_id,
                room=place.rooms[room_id].name,
                day=day,
                calendar=place.calendar_name,
                occupied_min=round(place.calendar.occupied_hours(day) * 60),
                co2_values=len(rd.co2),
                **_icone_fields(found),
                co2_mean=_mean(rd.co2),
                co2_max=rd.top,
                min_above_800=above[0],
                min_above_1500=above[1],
                co2_cat_i_min=co2_min[0],
                co2_cat_ii_min=co2_min[1],
                co2_cat_iii_min=co2_min[2],
                co2_cat_iv_min=co2_min[3],
                season="heating" if heating else "cooling",
                temperature_values=len(rd.temperature),
                temperature_mean=_mean(rd.temperature),
                temp_cat_i_min=temp_min[0],
                temp_cat_ii_min=temp_min[1],
                temp_cat_iii_min=temp_min[2],
                temp_cat_iv_min=temp_min[3],
            )
        )
    return rows


def icone_period(
    session: Session, place: data.Place, first: date, last: date, *, room_ids: set[int] | None = None
) -> list[IconePeriod]:
    """One ICONE per room over all the school days of [first, last] (the regulatory campaign is one
    school week: four days or more)."""
    by_room: dict[int, list[list[float]]] = {}
    for (room_id, _day), rd in sorted(_room_days(session, place, first, last, room_ids).items()):
        if rd.co2:
            by_room.setdefault(room_id, []).append(rd.co2)
    rows = []
    for room_id, per_day in sorted(by_room.items()):
        found = indices.icone(v for values in per_day for v in values)
        rows.append(
            IconePeriod(
                building_id=place.building.id,
                room_id=room_id,
                room=place.rooms[room_id].name,
                first=first,
                last=last,
                calendar=place.calendar_name,
                school_days=len(per_day),
                values=found.values,
                **_icone_fields(found),
            )
        )
    return rows
