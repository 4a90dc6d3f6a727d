"""People in each room and in the building, from the door counters' `people_in` / `people_out`.

Per local day and room, presence starts at 0 at midnight and moves, minute by minute (the 1-minute
rollups of the counts), by in − out, never below 0 (a missed entry must not leave a room owing
people): the same rule as the node's own `occupancy`, recomputed here so that a day stands on its
counts alone. The building's presence is the sum of its rooms' at each minute; its `people_in` is
the sum of its rooms' entries (a person walking through two counted rooms is counted twice).
Occupied hours are the time with at least one person present. This uses no calendar.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import UTC, date, datetime

from pydantic import BaseModel
from sqlmodel import Session

from fleet.insight import data

STEP = 60
NAMES = ("people_in", "people_out")


class OccupancyDay(BaseModel):
    """One room (or, with room_id None, the whole building) on one day with door counts."""

    building_id: int
    room_id: int | None
    room: str | None
    day: date
    people_in: int
    people_out: int
    peak: int  # most people present at once
    peak_at: datetime | None  # first minute the peak was reached
    occupied_hours: float


@dataclass
class _Changes:
    """A room's presence after each minute with counts: [(epoch minute, presence)], ascending."""

    people_in: int
    people_out: int
    steps: list[tuple[int, int]]


def _changes(ins: data.Slots, outs: data.Slots, minutes: list[int], start: int, end: int) -> _Changes | None:
    """The room's day [start, end), from its ascending counted `minutes` (of every day)."""
    minutes = minutes[bisect.bisect_left(minutes, start) : bisect.bisect_left(minutes, end)]
    if not minutes:
        return None
    present, steps, total_in, total_out = 0, [], 0, 0
    for t in minutes:
        came = round(ins.by_start[t].sum) if t in ins.by_start else 0
        left = round(outs.by_start[t].sum) if t in outs.by_start else 0
        total_in, total_out = total_in + came, total_out + left
        present = max(0, present + came - left)
        steps.append((t, present))
    return _Changes(total_in, total_out, steps)


def _summary(steps: list[tuple[int, int]], end: int) -> tuple[int, datetime | None, float]:
    """(peak, when first reached, occupied hours) of a presence step function ending at `end`."""
    peak, peak_at, occupied = 0, None, 0
    for i, (t, present) in enumerate(steps):
        if present > peak:
            peak, peak_at = present, datetime.fromtimestamp(t, UTC)
        if present > 0:
            occupied += (steps[i + 1][0] if i + 1 < len(steps) else end) - t
    return peak, peak_at, occupied / 3600


def _building_steps(per_room: list[_Changes]) -> list[tuple[int, int]]:
    """The sum of the rooms' presences, as one step function."""
    events = sorted((t, i, present) for i, c in enumerate(per_room) for t, present in c.steps)
    current = [0] * len(per_room)
    steps: list[tuple[int, int]] = []
    for t, i, present in events:
        current[i] = present
        if steps and steps[-1][0] == t:
            steps[-1] = (t, sum(current))
        else:
            steps.append((t, sum(current)))
    return steps


def occupancy_days(
    session: Session, place: data.Place, first: date, last: date, *, room_ids: set[int] | None = None
) -> list[OccupancyDay]:
    """Per day of [first, last] with counts: a row per counted room, then one for the building (the
    rooms asked for)."""
    cal = place.calendar
    days = data.days(first, last)
    since, until = data.utc_day_range(cal, days[0], days[-1])
    counted = {
        room_id: data.slots(session, devices, NAMES, "1m", since, until, STEP)
        for room_id, devices in sorted(place.devices.items())
        if room_ids is None or room_id in room_ids
    }
    minutes = {
        room_id: sorted(set(s["people_in"].by_start) | set(s["people_out"].by_start))
        for room_id, s in counted.items()
    }
    rows: list[OccupancyDay] = []
    for day in days:
        start, end = (data.epoch(t) for t in cal.day_bounds(day))
        per_room = {
            room_id: found
            for room_id, slots in counted.items()
            if (found := _changes(slots["people_in"], slots["people_out"], minutes[room_id], start, end))
            is not None
        }
        for room_id, c in per_room.items():
            peak, peak_at, hours = _summary(c.steps, end)
            rows.append(
                OccupancyDay(
                    building_id=place.building.id,
                    room_id=room_id,
                    room=place.rooms[room_id].name,
                    day=day,
                    people_in=c.people_in,
                    people_out=c.people_out,
                    peak=peak,
                    peak_at=peak_at,
                    occupied_hours=hours,
                )
            )
        if per_room:
            peak, peak_at, hours = _summary(_building_steps(list(per_room.values())), end)
            rows.append(
                OccupancyDay(
                    building_id=place.building.id,
                    room_id=None,
                    room=None,
                    day=day,
                    people_in=sum(c.people_in for c in per_room.values()),
                    people_out=sum(c.people_out for c in per_room.values()),
                    peak=peak,
                    peak_at=peak_at,
                    occupied_hours=hours,
                )
            )
    return rows
