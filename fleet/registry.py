"""The registry of sites and devices, and the read-side lookups the API serves."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet.models import Device, DeviceStatus, Reading, Reject, Site


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


def register_device(
    session: Session, device_id: str, site_slug: str, room: str, board: str = "sim"
) -> Device:
    """Add the device, or move an existing one to this site/room/board; commits."""
    site = ensure_site(session, site_slug)
    device = session.get(Device, device_id)
    if device is None:
        device = Device(id=device_id, site_id=site.id, room=room, board=board)
        session.add(device)
    else:
        device.site_id, device.room, device.board = site.id, room, board
    session.commit()
    session.refresh(device)
    return device


def get_device(session: Session, device_id: str) -> Device | None:
    return session.get(Device, device_id)


def list_devices(session: Session) -> Sequence[tuple[Device, Site]]:
    return session.exec(select(Device, Site).join(Site).order_by(Device.id)).all()


def get_device_with_site(session: Session, device_id: str) -> tuple[Device, Site] | None:
    return session.exec(select(Device, Site).join(Site).where(Device.id == device_id)).first()


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


def readings(
    session: Session,
    device_id: str,
    *,
    metric: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
) -> list[Reading]:
    """The latest `limit` readings in [since, until], returned oldest first."""
    query = select(Reading).where(Reading.device_id == device_id)
    if metric:
        query = query.where(Reading.name == metric)
    if since:
        query = query.where(Reading.ts >= since)
    if until:
        query = query.where(Reading.ts <= until)
    query = query.order_by(col(Reading.ts).desc(), col(Reading.id).desc()).limit(limit)
    return list(reversed(session.exec(query).all()))


def recent_rejects(session: Session, limit: int = 100) -> list[Reject]:
    """The latest `limit` rejects, oldest first."""
    query = select(Reject).order_by(col(Reject.id).desc()).limit(limit)
    return list(reversed(session.exec(query).all()))
