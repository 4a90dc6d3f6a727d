"""Noise per room and occupied hour: LAeq and time above thresholds.

LAeq over an hour is the energy mean of the nodes' window LAeqs, 10·log10(mean(10^(L/10))), so it
cannot come from rollups (their sum is a sum of dB). It is computed from the raw `noise_laeq`
readings taken inside the calendar's occupied spans of that clock hour: a bounded scan (one reading
per report window and sensor), counting every window equally, as the nodes' report windows are
fixed. Time above a threshold is the hour's occupied minutes × the share of its windows above.
65 dB(A) marks a loud room; 80 dB(A) is the lower exposure action value of Directive 2003/10/EC.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from pydantic import BaseModel
from sqlmodel import Session, col, select

from fleet.insight import data, indices
from fleet.models import Reading, as_utc

NAME = "noise_laeq"
THRESHOLDS = (65.0, 80.0)  # dB(A)


class NoiseHour(BaseModel):
    building_id: int
    room_id: int
    room: str
    hour: datetime  # start of the local clock hour
    calendar: str
    occupied_min: int  # the calendar's occupied minutes in that hour
    readings: int
    laeq: float
    min_above_65: float
    min_above_80: float


def noise_hours(
    session: Session, place: data.Place, first: date, last: date, *, room_ids: set[int] | None = None
) -> list[NoiseHour]:
    """Per room and clock hour with occupied time and noise readings, over [first, last]."""
    cal = place.calendar
    days = [d for d in data.days(first, last, data.MAX_DAYS_MINUTES) if cal.spans(d)]
    if not days:
        return []
    zone = ZoneInfo(cal.tz)
    # local hour start → occupied minutes in it
    occupied: dict[datetime, float] = defaultdict(float)
    spans = {day: cal.spans(day) for day in days}
    for start, end in (span for day_spans in spans.values() for span in day_spans):
        t = start.replace(minute=0, second=0, microsecond=0)
        while t < end:
            nxt = t + timedelta(hours=1)
            occupied[t] += (min(end, nxt) - max(start, t)).total_seconds() / 60
            t = nxt
    rooms = {
        d: room_id
        for room_id, devices in place.devices.items()
        if room_ids is None or room_id in room_ids
        for d in devices
    }
    levels: dict[tuple[int, datetime], list[float]] = defaultdict(list)
    if rooms:
        since, until = data.utc_day_range(cal, days[0], days[-1])
        found = session.exec(
            select(Reading.device_id, Reading.ts, Reading.value).where(
                col(Reading.device_id).in_(sorted(rooms)),
                Reading.name == NAME,
                Reading.ts >= since,
                Reading.ts < until,
            )
        )
        for device_id, ts, value in found:
            local = as_utc(ts).astimezone(zone)
            if any(a <= local < b for a, b in spans.get(local.date(), ())):
                levels[rooms[device_id], local.replace(minute=0, second=0, microsecond=0)].append(value)
    rows = []
    for (room_id, hour), values in sorted(levels.items()):
        minutes = occupied[hour]
        above = [minutes * sum(1 for v in values if v > limit) / len(values) for limit in THRESHOLDS]
        rows.append(
            NoiseHour(
                building_id=place.building.id,
                room_id=room_id,
                room=place.rooms[room_id].name,
                hour=hour,
                calendar=place.calendar_name,
                occupied_min=round(minutes),
                readings=len(values),
                laeq=indices.laeq(values),
                min_above_65=above[0],
                min_above_80=above[1],
            )
        )
    return rows
