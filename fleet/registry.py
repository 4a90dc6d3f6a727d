"""The registry: sites → buildings → floors → rooms (zones group rooms), devices and their sensors.

Write functions take `who` and record the change in the audit log in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func
from sqlmodel import Session, SQLModel, col, select

from fleet import audit
from fleet.models import (
    Building,
    Device,
    DeviceSensor,
    DeviceStatus,
    Floor,
    Lifecycle,
    Reading,
    Reject,
    Room,
    Site,
    Zone,
)

DEFAULT_BUILDING = "main"
DEFAULT_FLOOR = "0"


@dataclass(frozen=True)
class PlaceKind:
    """How one level of the building tree hangs together: its parent, and what blocks its deletion."""

    entity: str
    model: type[SQLModel]
    parent: tuple[str, type[SQLModel]] | None
    dependents: tuple[tuple[type[SQLModel], str], ...]

    def get(self, session: Session, key: str) -> SQLModel | None:
        if self.model is Site:
            return session.exec(select(Site).where(Site.slug == key)).first()
        return session.get(self.model, int(key)) if key.isdigit() else None

    def key(self, obj: SQLModel) -> str:
        return obj.slug if isinstance(obj, Site) else str(obj.id)

    def blockers(self, session: Session, obj: SQLModel) -> dict[str, int]:
        """What hangs off `obj`, by table, e.g. {"device": 3}."""
        out = {}
        for model, column in self.dependents:
            n = session.exec(
                select(func.count()).select_from(model).where(getattr(model, column) == obj.id)
            ).one()
            if n:
                out[model.__tablename__] = n
        return out


SITES = PlaceKind("site", Site, None, ((Building, "site_id"), (Device, "site_id")))
BUILDINGS = PlaceKind(
    "building", Building, ("site_id", Site), ((Floor, "building_id"), (Zone, "building_id"))
)
FLOORS = PlaceKind("floor", Floor, ("building_id", Building), ((Room, "floor_id"),))
ZONES = PlaceKind("zone", Zone, ("building_id", Building), ((Room, "zone_id"),))
ROOMS = PlaceKind("room", Room, ("floor_id", Floor), ((Device, "room_id"),))
PLACES = {k.entity: k for k in (SITES, BUILDINGS, FLOORS, ZONES, ROOMS)}


def site_id_of(session: Session, obj: SQLModel) -> int:
    """The site a place or device belongs to, walking up the tree."""
    while not isinstance(obj, Site):
        if isinstance(obj, Device | Building):
            return obj.site_id
        kind = PLACES[obj.__tablename__]
        field, parent_model = kind.parent
        obj = session.get(parent_model, getattr(obj, field))
    return obj.id


def create_place(session: Session, kind: PlaceKind, who: str, data: dict[str, Any]) -> SQLModel:
    obj = kind.model(**data)
    session.add(obj)
    session.flush()
    audit.record(session, who, "create", kind.entity, kind.key(obj), after=audit.snapshot(obj))
    session.commit()
    session.refresh(obj)
    return obj


def update_place(
    session: Session, kind: PlaceKind, who: str, obj: SQLModel, changes: dict[str, Any]
) -> SQLModel:
    before = audit.snapshot(obj)
    for field, value in changes.items():
        setattr(obj, field, value)
    session.flush()
    audit.record(session, who, "update", kind.entity, kind.key(obj), before=before, after=audit.snapshot(obj))
    session.commit()
    session.refresh(obj)
    return obj


def delete_place(session: Session, kind: PlaceKind, who: str, obj: SQLModel) -> None:
    """Delete, with what hangs off it: the database cascades down the tree and unplaces devices of
    deleted rooms; a site's devices and their data go with it."""
    before = audit.snapshot(obj)
    if isinstance(obj, Site):
        _delete_devices(session, session.exec(select(Device.id).where(Device.site_id == obj.id)).all())
    session.delete(obj)
    audit.record(session, who, "delete", kind.entity, kind.key(obj), before=before)
    session.commit()


def list_places(session: Session, kind: PlaceKind, **filters: int | None) -> Sequence[SQLModel]:
    query = select(kind.model).order_by(kind.model.id)
    for field, value in filters.items():
        if value is not None:
            query = query.where(getattr(kind.model, field) == value)
    return session.exec(query).all()


# --- devices ----------------------------------------------------------------------------------


def ensure_site(session: Session, slug: str, name: str | None = None) -> Site:
    """The site with this slug, created (named after the slug unless `name` is given) if missing."""
    site = session.exec(select(Site).where(Site.slug == slug)).first()
    if site is None:
        site = Site(slug=slug, name=name or slug)
        session.add(site)
        session.flush()
    elif name and site.name != name:
        site.name = name
    return site


def _ensure(session: Session, model: type[SQLModel], **match: Any) -> Any:
    found = session.exec(select(model).filter_by(**match)).first()
    if found is None:
        found = model(**match)
        session.add(found)
        session.flush()
    return found


def ensure_room(
    session: Session, site: Site, room: str, building: str = DEFAULT_BUILDING, floor: str = DEFAULT_FLOOR
) -> Room:
    """The room named `room` on `floor` of `building` of the site, creating what is missing."""
    b = session.exec(select(Building).where(Building.site_id == site.id, Building.slug == building)).first()
    if b is None:
        b = Building(site_id=site.id, slug=building, name=building)
        session.add(b)
        session.flush()
    f = _ensure(session, Floor, building_id=b.id, name=floor)
    return _ensure(session, Room, floor_id=f.id, name=room)


def register_device(
    session: Session, device_id: str, site_slug: str, room: str, board: str = "sim", who: str = "cli"
) -> Device:
    """Add the device in this room of the site (building `main`, floor `0` unless the room exists
    there already), or move an existing one; commits."""
    site = ensure_site(session, site_slug)
    room_id = ensure_room(session, site, room).id
    device = session.get(Device, device_id)
    before = audit.snapshot(device)
    if device is None:
        device = Device(id=device_id, site_id=site.id, room_id=room_id, board=board)
        session.add(device)
    else:
        device.site_id, device.room_id, device.board = site.id, room_id, board
    session.flush()
    audit.record(
        session, who, "update" if before else "create", "device", device_id, before, audit.snapshot(device)
    )
    session.commit()
    session.refresh(device)
    return device


def create_device(session: Session, who: str, data: dict[str, Any]) -> Device:
    device = Device(**data)
    if device.lifecycle == Lifecycle.retired:
        raise ValueError("a new device cannot be retired")
    session.add(device)
    session.flush()
    audit.record(session, who, "create", "device", device.id, after=audit.snapshot(device))
    session.commit()
    session.refresh(device)
    return device


def update_device(session: Session, who: str, device: Device, changes: dict[str, Any]) -> Device:
    before = audit.snapshot(device)
    for field, value in changes.items():
        setattr(device, field, value)
    session.flush()
    audit.record(session, who, "update", "device", device.id, before, audit.snapshot(device))
    session.commit()
    session.refresh(device)
    return device


def device_blockers(session: Session, device: Device) -> dict[str, int]:
    n = session.exec(select(func.count()).select_from(Reading).where(Reading.device_id == device.id)).one()
    return {"reading": n} if n else {}


def delete_device(session: Session, who: str, device: Device) -> None:
    before = audit.snapshot(device)
    _delete_devices(session, [device.id])
    audit.record(session, who, "delete", "device", device.id, before=before)
    session.commit()


def _delete_devices(session: Session, device_ids: Sequence[str]) -> None:
    """Readings (whose table predates ON DELETE CASCADE) first; the database cascades the rest."""
    if device_ids:
        session.exec(delete(Reading).where(col(Reading.device_id).in_(device_ids)))
        session.exec(delete(Device).where(col(Device.id).in_(device_ids)))


@dataclass(frozen=True)
class DeviceRow:
    device: Device
    site: Site
    room: Room | None


def device_rows(
    session: Session,
    *,
    device_id: str | None = None,
    site_ids: Iterable[int] | None = None,
    status: str | None = None,
    tag: str | None = None,
) -> list[DeviceRow]:
    """Devices with their site and room, ordered by id; filtered by id, sites, status, tag."""
    query = (
        select(Device, Site, Room)
        .join(Site, Site.id == Device.site_id)
        .outerjoin(Room, Room.id == Device.room_id)
        .order_by(Device.id)
    )
    if device_id is not None:
        query = query.where(Device.id == device_id)
    if site_ids is not None:
        query = query.where(col(Device.site_id).in_(list(site_ids)))
    if status is not None:
        query = query.where(Device.status == status)
    rows = [DeviceRow(*row) for row in session.exec(query).all()]
    return [r for r in rows if tag is None or tag in r.device.tags]


def get_device(session: Session, device_id: str) -> Device | None:
    return session.get(Device, device_id)


def devices_by_id(session: Session, device_ids: Iterable[str]) -> dict[str, Device]:
    """The registered devices among `device_ids` (the others are unknown to the fleet)."""
    ids = set(device_ids)
    if not ids:
        return {}
    return {d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(ids))).all()}


def device_counts(session: Session) -> dict[str, int]:
    """Devices per status, every status present (0 when none)."""
    counts = dict.fromkeys(DeviceStatus, 0)
    for status, n in session.exec(select(Device.status, func.count()).group_by(Device.status)).all():
        counts[DeviceStatus(status)] = n
    return {str(k): v for k, v in counts.items()}


def add_sensor(session: Session, who: str, device: Device, data: dict[str, Any]) -> DeviceSensor:
    sensor = DeviceSensor(device_id=device.id, **data)
    session.add(sensor)
    session.flush()
    audit.record(session, who, "create", "device_sensor", sensor.id, after=audit.snapshot(sensor))
    session.commit()
    session.refresh(sensor)
    return sensor


def remove_sensor(session: Session, who: str, sensor: DeviceSensor) -> None:
    audit.record(session, who, "delete", "device_sensor", sensor.id, before=audit.snapshot(sensor))
    session.delete(sensor)
    session.commit()


def sensors_of(session: Session, device_id: str) -> Sequence[DeviceSensor]:
    return session.exec(
        select(DeviceSensor).where(DeviceSensor.device_id == device_id).order_by(DeviceSensor.id)
    ).all()


def recent_rejects(session: Session, limit: int = 100) -> list[Reject]:
    """The latest `limit` rejects, oldest first."""
    query = select(Reject).order_by(col(Reject.id).desc()).limit(limit)
    return list(reversed(session.exec(query).all()))
