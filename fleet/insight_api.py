"""Building insight over HTTP: air, ICONE, occupancy, energy, noise and the OPERAT year of a
building, as JSON or CSV (`?format=csv` or `Accept: text/csv`). The site calendar they use is set
through /api/v1/sites/{site}/calendar.

Thin routes: the work is in fleet.insight. A building outside the token's sites answers 403, and so
does a report on metrics outside a token's metric scope.
"""

# No `from __future__ import annotations`: FastAPI resolves the route annotations at import.

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel
from sqlmodel import Session
from starlette.exceptions import HTTPException

from fleet import insight, readings
from fleet.auth import Perm, Principal, require
from fleet.db import get_session
from fleet.insight import data

CSV = "text/csv; charset=utf-8"
SessionDep = Annotated[Session, Depends(get_session)]
Reader = Annotated[Principal, require(Perm.read)]
Start = Annotated[date | None, Query(description="first local day (default: 6 days before end)")]
End = Annotated[date | None, Query(description="last local day, inclusive (default: today)")]
Rooms = Annotated[list[int] | None, Query(alias="room", description="only these room ids")]
Format = Annotated[Literal["json", "csv"] | None, Query(description="or send Accept: text/csv")]
CSV_RESPONSE = {200: {"content": {"text/csv": {}}}}


def _visible(session: Session, caller: Principal, building_id: int, metrics: tuple[str, ...]) -> data.Place:
    """The building, if the caller may see its site and read the metrics the report is made of."""
    found = data.place(session, building_id)
    if found is None:
        raise HTTPException(404, f"no building {building_id}")
    caller.check_site(found.site.id)
    for metric in metrics:
        caller.check_metric(metric)
    return found


@dataclass(frozen=True)
class Report:
    """What one report covers: a visible building, local days [first, last], maybe some rooms."""

    place: data.Place
    first: date
    last: date
    rooms: set[int] | None


def _report(metrics: tuple[str, ...]):
    """Dependency: the building and range a report on `metrics` covers, checked against the caller."""

    def covered(
        building_id: int,
        session: SessionDep,
        caller: Reader,
        start: Start = None,
        end: End = None,
        room: Rooms = None,
    ) -> Report:
        found = _visible(session, caller, building_id, metrics)
        last = end or datetime.now(ZoneInfo(found.calendar.tz)).date()
        return Report(found, start or last - timedelta(days=6), last, set(room) if room else None)

    return Depends(covered)


def _rows(request: Request, fmt: str | None, rows: list[BaseModel], model: type[BaseModel]):
    if fmt == "csv" or (fmt is None and "text/csv" in request.headers.get("accept", "")):
        return PlainTextResponse(readings.to_csv(rows, model), media_type=CSV)
    return rows


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1/insight", tags=["insight"])
    building = "/buildings/{building_id}"

    @r.get(f"{building}/air", response_model=list[insight.AirDay], responses=CSV_RESPONSE)
    def air(
        request: Request,
        session: SessionDep,
        report: Annotated[Report, _report(insight.air.NAMES)],
        outdoor_ppm: Annotated[float, Query(ge=0, le=2000, description="outdoor CO2")] = 400.0,
        format: Format = None,
    ):
        """Per room and school day: ICONE, minutes above 800/1500 ppm, EN 16798-1 categories."""
        rows = insight.air_days(
            session, report.place, report.first, report.last, room_ids=report.rooms, outdoor_ppm=outdoor_ppm
        )
        return _rows(request, format, rows, insight.AirDay)

    @r.get(f"{building}/icone", response_model=list[insight.IconePeriod], responses=CSV_RESPONSE)
    def icone(
        request: Request,
        session: SessionDep,
        report: Annotated[Report, _report(("co2",))],
        format: Format = None,
    ):
        """Per room, one ICONE over every school day of the range (the regulatory reading)."""
        rows = insight.icone_period(session, report.place, report.first, report.last, room_ids=report.rooms)
        return _rows(request, format, rows, insight.IconePeriod)

    @r.get(f"{building}/occupancy", response_model=list[insight.OccupancyDay], responses=CSV_RESPONSE)
    def occupancy(
        request: Request,
        session: SessionDep,
        report: Annotated[Report, _report(insight.occupancy.NAMES)],
        format: Format = None,
    ):
        """Per day: people in, peak and occupied hours of each counted room, then of the building."""
        rows = insight.occupancy_days(session, report.place, report.first, report.last, room_ids=report.rooms)
        return _rows(request, format, rows, insight.OccupancyDay)

    @r.get(f"{building}/energy", response_model=list[insight.EnergyRow], responses=CSV_RESPONSE)
    def energy(
        request: Request,
        session: SessionDep,
        report: Annotated[Report, _report((insight.energy.NAME,))],
        period: Annotated[Literal["day", "month"], Query()] = "day",
        format: Format = None,
    ):
        """kWh per day or month, occupied and not, per occupied hour, night and weekend baseload."""
        rows = insight.energy_periods(session, report.place, report.first, report.last, period)
        return _rows(request, format, rows, insight.EnergyRow)

    @r.get(f"{building}/operat", response_model=list[insight.OperatYear], responses=CSV_RESPONSE)
    def operat(
        request: Request,
        building_id: int,
        session: SessionDep,
        caller: Reader,
        year: Annotated[int, Query(ge=2000, le=2100)],
        format: Format = None,
    ):
        """The building's electricity of a calendar year, for the OPERAT declaration."""
        found = _visible(session, caller, building_id, (insight.energy.NAME,))
        return _rows(request, format, [insight.operat(session, found, year)], insight.OperatYear)

    @r.get(f"{building}/noise", response_model=list[insight.NoiseHour], responses=CSV_RESPONSE)
    def noise(
        request: Request,
        session: SessionDep,
        report: Annotated[Report, _report((insight.noise.NAME,))],
        format: Format = None,
    ):
        """Per room and occupied clock hour: LAeq (energy mean) and minutes above 65 and 80 dB(A)."""
        rows = insight.noise_hours(session, report.place, report.first, report.last, room_ids=report.rooms)
        return _rows(request, format, rows, insight.NoiseHour)

    return r
