"""What the dashboard pages show, read from the registry, the open alerts and the rollups.

A device's *condition* is its presence, refined by its open alerts: an online node with a health
alert (sensor fault, low heap, reboot loop) is `unhealthy`, one with a silent channel `stale`.
Latest values come from the day rollups' `last` (no raw rows are scanned).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func
from sqlmodel import Session, col, select

from fleet import alerts as alerts_
from fleet import insight, registry
from fleet.auth import Principal
from fleet.models import (
    Alert,
    Building,
    Channel,
    Command,
    Device,
    DeviceStatus,
    Floor,
    Release,
    Rollout,
    RolloutTarget,
    Rollup,
    Room,
    Site,
)
from fleet.registry import DeviceRow

HEALTH_RULES = frozenset({"sensor_fault", "low_heap", "reboot_loop"})
STALE_RULES = frozenset({"channel_stale"})
Condition = Literal["online", "stale", "unhealthy", "offline", "asleep", "provisioned"]
CONDITIONS: tuple[str, ...] = get_args(Condition)


def condition(device: Device, open_rules: set[str]) -> str:
    if device.status != DeviceStatus.online:
        return device.status
    if open_rules & HEALTH_RULES:
        return "unhealthy"
    return "stale" if open_rules & STALE_RULES else "online"


def open_rules(session: Session, device_ids: Iterable[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    ids = list(device_ids)
    if ids:
        query = select(Alert.device_id, Alert.rule).where(
            col(Alert.resolved_at).is_(None), col(Alert.device_id).in_(ids)
        )
        for device_id, rule in session.exec(query).all():
            out[device_id].add(rule)
    return out


@dataclass(frozen=True)
class DeviceLine:
    row: DeviceRow
    condition: str

    def matches(self, text: str) -> bool:
        d = self.row.device
        words = [d.id, d.name or "", self.row.site.slug, self.row.room.name if self.row.room else "", *d.tags]
        return any(text in w.lower() for w in words)


def visible_sites(session: Session, caller: Principal) -> list[Site]:
    return [s for s in session.exec(select(Site).order_by(Site.slug)).all() if caller.sees(s.id)]


def device_lines(session: Session, site_ids: Iterable[int] | None) -> list[DeviceLine]:
    """The devices of these sites (None: all) with their condition."""
    rows = registry.device_rows(session, site_ids=site_ids)
    rules = open_rules(session, [r.device.id for r in rows])
    return [DeviceLine(r, condition(r.device, rules.get(r.device.id, set()))) for r in rows]


def filtered(lines: Sequence[DeviceLine], wanted: str | None, search: str) -> list[DeviceLine]:
    """Those in condition `wanted` (None: any) whose id, name, site, room or a tag contains `search`."""
    text = search.strip().lower()
    return [
        line
        for line in lines
        if (wanted is None or line.condition == wanted) and (not text or line.matches(text))
    ]


def counts_by_site(lines: Sequence[DeviceLine]) -> dict[str, dict[str, int]]:
    """{site slug: {condition: n}}, every condition present."""
    out: dict[str, dict[str, int]] = {}
    for line in lines:
        out.setdefault(line.row.site.slug, dict.fromkeys(CONDITIONS, 0))[line.condition] += 1
    return out


# --- latest values -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Latest:
    value: float
    ts: datetime
    device_id: str


def latest(session: Session, device_ids: Sequence[str]) -> dict[str, dict[str, Latest]]:
    """{device: {metric: its newest value}} from the newest day bucket of each channel."""
    out: dict[str, dict[str, Latest]] = defaultdict(dict)
    if not device_ids:
        return out
    day = Rollup.resolution == "1d"
    newest = (
        select(Rollup.device_id, Rollup.name, func.max(Rollup.bucket).label("bucket"))
        .where(day, col(Rollup.device_id).in_(device_ids))
        .group_by(Rollup.device_id, Rollup.name)
        .subquery()
    )
    query = select(Rollup).join(
        newest,
        and_(
            Rollup.device_id == newest.c.device_id,
            Rollup.name == newest.c.name,
            Rollup.bucket == newest.c.bucket,
        ),
    )
    for r in session.exec(query.where(day)).all():
        out[r.device_id][r.name] = Latest(r.last, r.last_ts, r.device_id)
    return out


def merged(per_device: dict[str, dict[str, Latest]], device_ids: Iterable[str]) -> dict[str, Latest]:
    """A room's latest value of each metric: the newest among its devices."""
    out: dict[str, Latest] = {}
    for device_id in device_ids:
        for name, found in per_device.get(device_id, {}).items():
            if name not in out or found.ts > out[name].ts:
                out[name] = found
    return out


# --- the building tree ---------------------------------------------------------------------------
@dataclass
class RoomTile:
    room: Room
    device_ids: list[str]
    values: dict[str, Latest]


@dataclass
class FloorRow:
    floor: Floor
    rooms: list[RoomTile] = field(default_factory=list)


@dataclass
class BuildingBlock:
    building: Building
    floors: list[FloorRow] = field(default_factory=list)


def site_tree(session: Session, site: Site) -> tuple[list[BuildingBlock], list[DeviceLine]]:
    """The site's buildings → floors → room tiles with their latest values; and its unplaced devices."""
    query = (
        select(Building, Floor, Room)
        .where(Building.site_id == site.id)
        .join(Floor, Floor.building_id == Building.id)
        .join(Room, Room.floor_id == Floor.id)
        .order_by(Building.slug, Floor.level, Floor.name, Room.name)
    )
    places = session.exec(query).all()
    lines = device_lines(session, [site.id])
    in_room: dict[int, list[str]] = defaultdict(list)
    for line in lines:
        if line.row.device.room_id is not None:
            in_room[line.row.device.room_id].append(line.row.device.id)
    values = latest(session, [line.row.device.id for line in lines])
    blocks: dict[int, BuildingBlock] = {}
    for building, floor, room in places:
        block = blocks.setdefault(building.id, BuildingBlock(building))
        if not block.floors or block.floors[-1].floor.id != floor.id:
            block.floors.append(FloorRow(floor))
        ids = in_room.get(room.id, [])
        block.floors[-1].rooms.append(RoomTile(room, ids, merged(values, ids)))
    return list(blocks.values()), [line for line in lines if line.row.device.room_id is None]


def room_place(session: Session, room: Room) -> tuple[Site, Building, Floor]:
    floor = session.get(Floor, room.floor_id)
    building = session.get(Building, floor.building_id)
    return session.get(Site, building.site_id), building, floor


# --- one device ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class OtaStep:
    rollout: Rollout
    release: Release
    target: RolloutTarget


def ota_history(session: Session, device_id: str, limit: int = 20) -> list[OtaStep]:
    """The rollouts that offered this device a release, newest first, with how it went."""
    query = (
        select(RolloutTarget, Rollout, Release)
        .where(RolloutTarget.device_id == device_id)
        .join(Rollout, Rollout.id == RolloutTarget.rollout_id)
        .join(Release, Release.id == Rollout.release_id)
        .order_by(col(Rollout.id).desc())
        .limit(limit)
    )
    return [OtaStep(rollout, release, target) for target, rollout, release in session.exec(query).all()]


def alert_history(session: Session, device_id: str, limit: int = 50) -> list[Alert]:
    """Open and resolved alerts of the device, newest first: its health history."""
    return alerts_.list_alerts(session, open_only=False, device_ids=[device_id], limit=limit)[::-1]


def recent_commands(session: Session, device_id: str, limit: int = 10) -> list[Command]:
    query = select(Command).where(Command.device_id == device_id)
    return list(session.exec(query.order_by(col(Command.created_at).desc()).limit(limit)).all())


def units(session: Session, device_id: str) -> dict[str, str | None]:
    """The SenML unit of each channel of the device, as it last reported it."""
    query = select(Channel.name, Channel.unit).where(Channel.device_id == device_id)
    return dict(session.exec(query).all())


@dataclass
class RoomInsight:
    """The last days of building insight for one room (fleet.insight), as far as the caller may read."""

    first: date
    last: date
    calendar: str
    air: list[insight.AirDay]
    occupancy: list[insight.OccupancyDay]
    noise: list[insight.NoiseHour]


def room_insight(
    session: Session, caller: Principal, room: Room, building: Building, days: int = 7
) -> RoomInsight:
    place = insight.place(session, building.id)
    last = datetime.now(ZoneInfo(place.calendar.tz)).date()
    first, rooms = last - timedelta(days=days - 1), {room.id}

    def readable(names: Iterable[str]) -> bool:
        return caller.metrics is None or set(names) <= caller.metrics

    return RoomInsight(
        first,
        last,
        place.calendar_name,
        insight.air_days(session, place, first, last, room_ids=rooms) if readable(insight.air.NAMES) else [],
        [
            row
            for row in insight.occupancy_days(session, place, first, last, room_ids=rooms)
            if row.room_id == room.id
        ]
        if readable(insight.occupancy.NAMES)
        else [],
        insight.noise_hours(session, place, first, last, room_ids=rooms)[-12:]
        if readable((insight.noise.NAME,))
        else [],
    )


def building_energy(
    session: Session, caller: Principal, buildings: Iterable[Building], days: int = 7
) -> dict[int, list[insight.EnergyRow]]:
    """Building id → its daily energy over the last days (fleet.insight), for buildings with a meter."""
    if caller.metrics is not None and insight.energy.NAME not in caller.metrics:
        return {}
    out = {}
    for building in buildings:
        place = insight.place(session, building.id)
        last = datetime.now(ZoneInfo(place.calendar.tz)).date()
        rows = insight.energy_periods(session, place, last - timedelta(days=days - 1), last, "day")
        if any(row.kwh is not None for row in rows):
            out[building.id] = rows
    return out
