"""Electricity per building: kWh per day and month, split by the site calendar into occupied and
unoccupied time, night and weekend baseload, consumption per occupied hour, and the yearly figure
France's tertiary-sector reporting (OPERAT, "décret tertiaire") asks for.

Energy is the sum of every meter's `energy_delta` (Wh since its previous report) in the building,
from the 15-minute rollups, each report counted in the quarter-hour of its timestamp (a report
window straddling a boundary lands in the later quarter). Meters are summed as they are: a sub-meter
below a main meter in the same building is counted twice.
- night baseload: mean power between 00:00 and 05:00 local time;
- weekend baseload: mean power over the days with no occupied hours (weekends, holidays);
- consumption per occupied hour: the day's (month's) kWh over its occupied hours: what each hour of
  use costs, waste outside the hours included.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from pydantic import BaseModel
from sqlmodel import Session, col, select

from fleet.insight import data
from fleet.models import Rollup

STEP = 900
NAME = "energy_delta"
NIGHT_END = time(5)


class EnergyRow(BaseModel):
    """One building over one day or one month (`period`), from `start` (a local date)."""

    building_id: int
    building: str
    period: str  # day or month
    start: date
    calendar: str
    days_with_data: int
    kwh: float | None
    occupied_kwh: float | None
    unoccupied_kwh: float | None
    occupied_hours: float
    kwh_per_occupied_hour: float | None
    night_baseload_w: float | None
    weekend_baseload_w: float | None


class OperatYear(BaseModel):
    """A building's annual final-energy consumption, as declared per entity and energy on OPERAT."""

    annee: int
    site: str
    batiment: str
    nom: str
    adresse: str | None
    type_energie: str
    unite: str
    consommation: float
    jours_mesures: int  # days of the year with metered data
    jours_annee: int
    compteurs: int  # meters summed
    heures_occupation: float  # occupied hours of the site calendar that year
    calendrier: str
    source: str


class _Day:
    """Energy figures of one local day, in Wh and hours."""

    def __init__(self, place: data.Place, found: data.Slots, day: date):
        cal = place.calendar
        start, end = cal.day_bounds(day)
        s, e = data.epoch(start), data.epoch(end)
        self.has_data = found.any_in(s, e)
        self.wh = found.total(s, e)
        self.occupied_wh = sum(found.total(data.epoch(a), data.epoch(b)) for a, b in cal.spans(day))
        self.occupied_h = cal.occupied_hours(day)
        night_end = data.epoch(datetime.combine(day, NIGHT_END, start.tzinfo))
        self.night_wh, self.night_h = found.total(s, night_end), (night_end - s) / 3600
        self.day_h = (e - s) / 3600


def _kwh(wh: float, has_data: bool) -> float | None:
    return wh / 1000 if has_data else None


def _row(place: data.Place, period: str, start: date, days: list[_Day]) -> EnergyRow:
    metered = [d for d in days if d.has_data]
    weekend = [d for d in metered if d.occupied_h == 0]
    wh = sum(d.wh for d in metered)
    occupied_wh = sum(d.occupied_wh for d in metered)
    occupied_h = sum(d.occupied_h for d in metered)
    night_h = sum(d.night_h for d in metered)
    weekend_h = sum(d.day_h for d in weekend)
    return EnergyRow(
        building_id=place.building.id,
        building=place.building.slug,
        period=period,
        start=start,
        calendar=place.calendar_name,
        days_with_data=len(metered),
        kwh=_kwh(wh, bool(metered)),
        occupied_kwh=_kwh(occupied_wh, bool(metered)),
        unoccupied_kwh=_kwh(wh - occupied_wh, bool(metered)),
        occupied_hours=sum(d.occupied_h for d in days),
        kwh_per_occupied_hour=wh / 1000 / occupied_h if occupied_h else None,
        night_baseload_w=sum(d.night_wh for d in metered) / night_h if night_h else None,
        weekend_baseload_w=sum(d.wh for d in weekend) / weekend_h if weekend_h else None,
    )


def _days(session: Session, place: data.Place, first: date, last: date) -> list[tuple[date, _Day]]:
    days = data.days(first, last)
    since, until = data.utc_day_range(place.calendar, days[0], days[-1])
    found = data.slots(session, place.device_ids, (NAME,), "15m", since, until, STEP)[NAME]
    return [(day, _Day(place, found, day)) for day in days]


def energy_periods(
    session: Session, place: data.Place, first: date, last: date, period: str = "day"
) -> list[EnergyRow]:
    """The building's energy per day (or per calendar month) of [first, last], local dates; a month
    cut by the range covers only its days in it (see days_with_data)."""
    if period not in ("day", "month"):
        raise ValueError(f"period must be day or month (got {period!r})")
    days = _days(session, place, first, last)
    if period == "day":
        return [_row(place, "day", day, [d]) for day, d in days]
    months: dict[date, list[_Day]] = {}
    for day, d in days:
        months.setdefault(day.replace(day=1), []).append(d)
    return [_row(place, "month", max(month, first), ds) for month, ds in months.items()]


def meters(session: Session, place: data.Place, since: datetime, until: datetime) -> int:
    """How many devices of the building reported energy in [since, until)."""
    if not place.device_ids:
        return 0
    query = (
        select(Rollup.device_id)
        .distinct()
        .where(
            col(Rollup.device_id).in_(place.device_ids),
            Rollup.name == NAME,
            Rollup.resolution == "1d",
            Rollup.bucket >= since,
            Rollup.bucket < until,
        )
    )
    return len(session.exec(query).all())


def operat(session: Session, place: data.Place, year: int) -> OperatYear:
    """The building's electricity of a calendar year (local time), for the OPERAT declaration."""
    first, last = date(year, 1, 1), date(year, 12, 31)
    days = [d for _, d in _days(session, place, first, last)]
    since, until = data.utc_day_range(place.calendar, first, last)
    day_floor = datetime.combine(since.date(), time(), UTC)  # 1d rollups are UTC days
    return OperatYear(
        annee=year,
        site=place.site.slug,
        batiment=place.building.slug,
        nom=place.building.name,
        adresse=place.building.address,
        type_energie="Électricité",
        unite="kWh EF",
        consommation=round(sum(d.wh for d in days) / 1000, 3),
        jours_mesures=sum(d.has_data for d in days),
        jours_annee=len(days),
        compteurs=meters(session, place, day_floor, until),
        heures_occupation=sum(d.occupied_h for d in days),
        calendrier=place.calendar_name,
        source="Maille: sous-comptage (energy_delta des compteurs du bâtiment)",
    )
