"""The registry as the integrations need it: each device in service with its place, presence and
channels, read in a few queries (no per-device query)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, col, select

from fleet.integrations.topics import Placement, RoomName, room_segments
from fleet.models import Building, Channel, Device, DeviceStatus, Floor, Lifecycle, Room, Site

PRESENT = (DeviceStatus.online, DeviceStatus.asleep)  # asleep: away by its own schedule, values valid


@dataclass(frozen=True)
class DeviceView:
    id: str
    name: str | None
    board: str
    fw: str | None
    status: str
    placement: Placement
    room_name: str | None
    channels: dict[str, str | None]  # measurement name → SenML unit

    @property
    def available(self) -> bool:
        return self.status in PRESENT


def load(session: Session) -> dict[str, DeviceView]:
    """Every device not retired, by id."""
    sites = dict(session.exec(select(Site.id, Site.slug)).all())
    rooms = session.exec(
        select(Room.id, Room.name, Floor.name, Building.slug, Building.site_id)
        .join(Floor, col(Room.floor_id) == Floor.id)
        .join(Building, col(Floor.building_id) == Building.id)
    ).all()
    names = {room_id: name for room_id, name, *_ in rooms}
    segments = room_segments(
        RoomName(room_id, sites[site_id], building, floor, name)
        for room_id, name, floor, building, site_id in rooms
    )
    devices = session.exec(
        select(
            Device.id, Device.name, Device.board, Device.fw, Device.status, Device.site_id, Device.room_id
        ).where(Device.lifecycle != Lifecycle.retired)
    ).all()
    channels: dict[str, dict[str, str | None]] = {}
    for device_id, name, unit in session.exec(select(Channel.device_id, Channel.name, Channel.unit)).all():
        channels.setdefault(device_id, {})[name] = unit
    return {
        device_id: DeviceView(
            id=device_id,
            name=name,
            board=board,
            fw=fw,
            status=status,
            placement=Placement(sites[site_id], segments.get(room_id) if room_id else None),
            room_name=names.get(room_id),
            channels=channels.get(device_id, {}),
        )
        for device_id, name, board, fw, status, site_id, room_id in devices
    }
