"""What building insight reads: a building's rooms, devices and calendar, and rollup buckets folded
into fixed time slots (dashboards and reports never scan raw rows where a rollup answers)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate

from sqlmodel import Session, col, select

from fleet import calendar
from fleet.models import Building, Device, Floor, Rollup, Room, Site, as_utc

MAX_DAYS = 366
MAX_DAYS_MINUTES = 92  # reports read from 1-minute rollups or raw readings: a school term at most
# A node that reports on change repeats an unchanged level at least every heartbeat (900 s by
# default): a slot with no reading holds the previous value for that long, no longer.
HOLD_S = 900


@dataclass(frozen=True)
class Place:
    """A building as insight sees it: its site's calendar, its rooms and the devices in each."""

    building: Building
    site: Site
    calendar: calendar.Calendar
    calendar_name: str  # "site", or the default's description
    rooms: dict[int, Room]
    devices: dict[int, list[str]]  # room id → device ids, for rooms that have devices

    @property
    def device_ids(self) -> list[str]:
        return sorted(d for ids in self.devices.values() for d in ids)


def place(session: Session, building_id: int) -> Place | None:
    building = session.get(Building, building_id)
    if building is None:
        return None
    site = session.get(Site, building.site_id)
    cal, name = calendar.effective(site.calendar)
    rooms = session.exec(
        select(Room).join(Floor, col(Room.floor_id) == Floor.id).where(Floor.building_id == building_id)
    ).all()
    by_room: dict[int, list[str]] = {}
    if rooms:
        found = session.exec(
            select(Device.room_id, Device.id)
            .where(col(Device.room_id).in_([r.id for r in rooms]))
            .order_by(Device.id)
        )
        for room_id, device_id in found:
            by_room.setdefault(room_id, []).append(device_id)
    return Place(building, site, cal, name, {r.id: r for r in rooms}, by_room)


def days(first: date, last: date, max_days: int = MAX_DAYS) -> list[date]:
    """The days of [first, last]; a clear error for a reversed or overlong range."""
    if last < first:
        raise ValueError(f"the range ends ({last}) before it starts ({first})")
    if (last - first).days + 1 > max_days:
        raise ValueError(f"this report covers at most {max_days} days (got {(last - first).days + 1})")
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def epoch(when: datetime) -> int:
    return int(when.timestamp())


@dataclass
class Slot:
    """The readings of one time slot, over every device asked for."""

    count: int = 0
    sum: float = 0.0
    max: float = float("-inf")
    last: float = 0.0
    last_ts: int = -1  # epoch seconds

    @property
    def mean(self) -> float:
        return self.sum / self.count


@dataclass
class Slots:
    """Rollup buckets folded into slots of `step` seconds aligned on the epoch, keyed by slot start."""

    step: int
    by_start: dict[int, Slot] = field(default_factory=dict)
    _order: list[int] | None = None  # the slot starts, sorted once they are all in
    _cumulative: list[float] = field(default_factory=list)  # running sums along _order

    def add(self, bucket: datetime, count: int, total: float, top: float, last: float, last_ts: datetime):
        start = epoch(bucket)
        slot = self.by_start.setdefault(start - start % self.step, Slot())
        self._order = None
        slot.count += count
        slot.sum += total
        slot.max = max(slot.max, top)
        t = epoch(last_ts)
        if t >= slot.last_ts:
            slot.last, slot.last_ts = last, t

    def levels(self, starts: Iterable[int], hold_s: int = HOLD_S) -> Iterator[tuple[int, float | None]]:
        """(slot start, mean level) for the given ascending slot starts; a slot without readings
        holds the last value seen within `hold_s` before it, else None."""
        held = self._ordered()
        for start in starts:
            i = bisect.bisect_left(held, start)  # held[i - 1]: the last slot before this one
            last_ts = self.by_start[held[i - 1]].last_ts if i else None
            slot = self.by_start.get(start)
            if slot is not None and slot.count:
                yield start, slot.mean
            elif last_ts is not None and start - last_ts <= hold_s:
                yield start, self.by_start[held[i - 1]].last
            else:
                yield start, None

    def _ordered(self) -> list[int]:
        if self._order is None:
            self._order = sorted(self.by_start)
            self._cumulative = list(accumulate((self.by_start[t].sum for t in self._order), initial=0.0))
        return self._order

    def _between(self, first: int, end: int) -> tuple[int, int]:
        order = self._ordered()
        return bisect.bisect_left(order, first), bisect.bisect_left(order, end)

    def total(self, first: int, end: int) -> float:
        """Sum of the slots starting in [first, end)."""
        i, j = self._between(first, end)
        return self._cumulative[j] - self._cumulative[i]

    def any_in(self, first: int, end: int) -> bool:
        i, j = self._between(first, end)
        return j > i


def slots(
    session: Session,
    device_ids: Sequence[str],
    names: Sequence[str],
    resolution: str,
    since: datetime,
    until: datetime,
    step: int,
) -> dict[str, Slots]:
    """Per measurement name, the `resolution` rollups of these devices with buckets in [since, until)
    folded into `step`-second slots."""
    out = {name: Slots(step) for name in names}
    if not device_ids:
        return out
    rows = session.exec(
        select(
            Rollup.name, Rollup.bucket, Rollup.count, Rollup.sum, Rollup.max, Rollup.last, Rollup.last_ts
        ).where(
            col(Rollup.device_id).in_(device_ids),
            col(Rollup.name).in_(names),
            Rollup.resolution == resolution,
            Rollup.bucket >= as_utc(since),
            Rollup.bucket < as_utc(until),
        )
    )
    for name, bucket, count, total, top, last, last_ts in rows:
        out[name].add(as_utc(bucket), count, total, top, last, as_utc(last_ts))
    return out


def span_slots(spans: Iterable[tuple[datetime, datetime]], step: int) -> list[int]:
    """Starts of the `step`-second slots (epoch-aligned) that begin inside the spans, ascending."""
    out: list[int] = []
    for start, end in spans:
        a, b = epoch(start), epoch(end)
        first = a + (-a) % step
        out.extend(range(first, b, step))
    return sorted(out)


def utc_day_range(cal: calendar.Calendar, first: date, last: date) -> tuple[datetime, datetime]:
    """[local midnight of `first`, local midnight after `last`) in UTC."""
    return cal.day_bounds(first)[0].astimezone(UTC), cal.day_bounds(last)[1].astimezone(UTC)
