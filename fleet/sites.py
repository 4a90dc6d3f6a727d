"""Sites as files: `sites/<name>.toml` declares a site's Wi-Fi, calendar (when it is occupied),
buildings, floors, rooms, the nodes expected in them and their meters; `apply` makes the registry
match it.

`apply` runs in one transaction and records every write in the audit log; a dry run is the same
work rolled back, so what it shows is exactly what the real run would do. Nothing that holds data
(a room with devices, a node with readings or broker credentials, a floor with rooms...) is deleted
unless `prune` is set; it is listed as kept instead. Devices the file does not declare (provisioned
by a technician) are never touched, except that deleting their room with `prune` unplaces them.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from string import ascii_lowercase
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func
from sqlmodel import Session, SQLModel, select

from fleet import audit
from fleet.calendar import Calendar
from fleet.contract import DEVICE_ID
from fleet.models import (
    Building,
    Device,
    DeviceCredential,
    DeviceSensor,
    Floor,
    Lifecycle,
    Reading,
    Room,
    Site,
    SiteWifi,
)


class SiteError(Exception):
    """A site file or a place that cannot be used; the message says where and why."""


# --- the file ---------------------------------------------------------------------------------
class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MeterSpec(_Spec):
    model: str = Field(min_length=1, max_length=32)
    channel: str = Field(pattern=r"^[a-z0-9_]{1,32}$")


class NodeSpec(_Spec):
    id: str | None = Field(None, description="default: <site>-<room>-<letter>, a for the room's first node")
    name: str | None = Field(None, max_length=64)
    board: str = "esp32-devkitc"
    meters: list[MeterSpec] = Field(default_factory=list)


class RoomSpec(_Spec):
    name: str = Field(min_length=1, max_length=64)
    use: str | None = Field(None, max_length=64)
    nodes: list[NodeSpec] = Field(default_factory=list, alias="node")


class FloorSpec(_Spec):
    name: str = Field(min_length=1, max_length=64)
    level: int = 0
    rooms: list[RoomSpec] = Field(default_factory=list, alias="room")


class BuildingSpec(_Spec):
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    name: str = Field(min_length=1, max_length=128)
    address: str | None = Field(None, max_length=256)
    floors: list[FloorSpec] = Field(default_factory=list, alias="floor")


class WifiSpec(_Spec):
    ssid: str = Field(min_length=1, max_length=64)
    # The password is better kept out of the file (and out of git): the name of a variable holding it.
    password_env: str | None = None
    password: str | None = Field(None, max_length=128)


class SiteSpec(_Spec):
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,63}$")
    name: str = Field(min_length=1, max_length=128)
    wifi: WifiSpec | None = None
    # When the building is occupied; absent: the stored calendar (set through the API) is left alone.
    calendar: Calendar | None = None


class SiteFile(_Spec):
    site: SiteSpec
    buildings: list[BuildingSpec] = Field(default_factory=list, alias="building")


def device_id_for(site: str, room: str, letter: str) -> str:
    """bliiida + 2.14 + a -> bliiida-2-14-a."""
    return re.sub(r"[^a-z0-9]+", "-", f"{site}-{room}-{letter}".lower()).strip("-")


def _line_of(lines: list[str], loc: tuple) -> int:
    """The 1-based line a pydantic error location points at, following [table] and [[array]] headers."""
    pos, prefix, i = 0, [], 0
    while i < len(loc) and isinstance(loc[i], str):
        prefix.append(loc[i])
        name = re.escape(".".join(prefix))
        index = loc[i + 1] if i + 1 < len(loc) and isinstance(loc[i + 1], int) else None
        header = re.compile(rf"^\s*\[\[\s*{name}\s*\]\]" if index is not None else rf"^\s*\[\s*{name}\s*\]")
        hits = [n for n in range(pos, len(lines)) if header.match(lines[n])]
        if index is not None and index < len(hits):
            pos, i = hits[index], i + 2
        elif index is None and hits:
            pos, i = hits[0], i + 1
        else:
            key = re.compile(rf"^\s*{re.escape(loc[i])}\s*=")
            return next((n for n in range(pos, len(lines)) if key.match(lines[n])), pos) + 1
    return pos + 1


def load(path: str | Path) -> SiteFile:
    """Read and validate a site file; every problem is reported with its file:line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SiteError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SiteError(f"{path}: not valid TOML: {e}") from None
    lines = text.splitlines()
    try:
        spec = SiteFile.model_validate(data)
    except ValidationError as e:
        raise SiteError(
            "\n".join(
                f"{path}:{_line_of(lines, err['loc'])}: {'.'.join(map(str, err['loc']))}: {err['msg']}"
                for err in e.errors()
            )
        ) from None
    problems = _check(spec)
    if problems:
        raise SiteError("\n".join(f"{path}:{_line_of(lines, loc)}: {msg}" for loc, msg in problems))
    return spec


def node_ids(spec: SiteFile) -> list[tuple[tuple, NodeSpec, str]]:
    """(location, node, its device id) for every node of the file."""
    out = []
    for b, building in enumerate(spec.buildings):
        for f, floor in enumerate(building.floors):
            for r, room in enumerate(floor.rooms):
                for n, node in enumerate(room.nodes):
                    loc = ("building", b, "floor", f, "room", r, "node", n)
                    out.append(
                        (loc, node, node.id or device_id_for(spec.site.slug, room.name, ascii_lowercase[n]))
                    )
    return out


def _check(spec: SiteFile) -> list[tuple[tuple, str]]:
    """What pydantic cannot see: duplicates, unknown boards, device ids, the Wi-Fi password's source."""
    from provisioning.boards import BoardError, load_board

    problems: list[tuple[tuple, str]] = []

    def unique(items, key, loc, what):
        seen = set()
        for i, item in enumerate(items):
            k = getattr(item, key)
            if k in seen:
                problems.append(((*loc, i, key), f"{what} {k!r} appears twice"))
            seen.add(k)

    unique(spec.buildings, "slug", ("building",), "building")
    for b, building in enumerate(spec.buildings):
        unique(building.floors, "name", ("building", b, "floor"), "floor")
        for f, floor in enumerate(building.floors):
            unique(floor.rooms, "name", ("building", b, "floor", f, "room"), "room")
    seen: set[str] = set()
    for loc, node, device_id in node_ids(spec):
        if not DEVICE_ID.match(device_id):
            problems.append(((*loc, "id"), f"device id {device_id!r}: 3 to 32 of a-z, 0-9 and '-'"))
        if device_id in seen:
            problems.append(((*loc, "id"), f"device id {device_id!r} appears twice"))
        seen.add(device_id)
        try:
            load_board(node.board)
        except BoardError as e:
            problems.append(((*loc, "board"), str(e)))
    wifi = spec.site.wifi
    if wifi and wifi.password is None and wifi.password_env is None:
        problems.append((("site", "wifi", "ssid"), "the Wi-Fi needs password_env (or password)"))
    return problems


# --- applying it ------------------------------------------------------------------------------
@dataclass
class Change:
    op: str  # create, update, delete, keep (not in the file but holds data; --prune deletes it)
    entity: str
    key: str  # site/building/floor/room, or a device id
    detail: str = ""

    def __str__(self) -> str:
        sign = {"create": "+", "update": "~", "delete": "-", "keep": "="}[self.op]
        return f"{sign} {self.op} {self.entity} {self.key}" + (f": {self.detail}" if self.detail else "")


QUIET = ("declared", "lifecycle")  # bookkeeping, not worth a line of the diff
BULKY = {"calendar": lambda raw: Calendar.model_validate(raw).summary() if raw else "none"}  # one-liners


class _Applier:
    def __init__(self, session: Session, who: str, prune: bool):
        self.s, self.who, self.prune = session, who, prune
        self.changes: list[Change] = []

    def upsert(
        self, entity: str, key: str, model: type[SQLModel], match: dict, values: dict, hide=(), where=""
    ):
        """The row matching `match`, created or updated to `values`; audited, not committed. The
        change shows `values` but ids (`where` names the place instead) and the `hide`n ones."""
        obj = self.s.exec(select(model).filter_by(**match)).first()
        shown = {k: v for k, v in values.items() if not k.endswith("_id") and k not in QUIET}
        if obj is None:
            obj = model(**match, **values)
            self.s.add(obj)
            self.s.flush()
            detail = ", ".join(f"{k}={'<hidden>' if k in hide else _show(k, v)}" for k, v in shown.items())
            place = f"in {where}" if where else ""
            self.changes.append(Change("create", entity, key, ", ".join(filter(None, (place, detail)))))
            audit.record(self.s, self.who, "create", entity, key, after=self.snap(obj, hide))
            return obj
        diff = {k: v for k, v in values.items() if getattr(obj, k) != v}
        if diff:
            before = self.snap(obj, hide)
            detail = ", ".join(
                f"{k} changed"
                if k in hide
                else f"{k} changed: {_show(k, v)}"
                if k in BULKY
                else f"{k} {getattr(obj, k)!r} -> {v!r}"
                for k, v in diff.items()
                if k in shown
            )
            if "room_id" in diff:
                detail = ", ".join(filter(None, (f"moved to {where}", detail)))
            for k, v in diff.items():
                setattr(obj, k, v)
            self.s.add(obj)
            self.s.flush()
            self.changes.append(Change("update", entity, key, detail))
            audit.record(self.s, self.who, "update", entity, key, before, self.snap(obj, hide))
        return obj

    @staticmethod
    def snap(obj: SQLModel, hide) -> dict[str, Any]:
        return {k: ("<hidden>" if k in hide else v) for k, v in audit.snapshot(obj).items()}

    def remove(self, entity: str, key: str, obj: SQLModel, holds: dict[str, int]) -> None:
        """Delete what the file no longer has, unless it holds data and prune is off."""
        held = ", ".join(f"{n} {what}" for what, n in holds.items() if n)
        if held and not self.prune:
            self.changes.append(
                Change("keep", entity, key, f"not in the file, holds {held}; --prune deletes it")
            )
            return
        audit.record(self.s, self.who, "delete", entity, key, before=audit.snapshot(obj))
        self.s.delete(obj)
        self.s.flush()
        self.changes.append(Change("delete", entity, key, f"with {held}" if held else ""))

    def count(self, model: type[SQLModel], **match) -> int:
        return self.s.exec(select(func.count()).select_from(model).filter_by(**match)).one()


def _show(key: str, value: Any) -> str:
    return BULKY[key](value) if key in BULKY else repr(value)


def _wifi_password(wifi: WifiSpec, stored: SiteWifi | None) -> str:
    if wifi.password is not None:
        return wifi.password
    value = os.environ.get(wifi.password_env or "")
    if value:
        return value
    if stored is not None:
        return stored.password  # kept: the variable is only needed to set or change it
    raise SiteError(f"the Wi-Fi password of {wifi.ssid!r}: set the variable {wifi.password_env}")


def apply(
    session: Session, spec: SiteFile, who: str, *, prune: bool = False, dry_run: bool = False
) -> list[Change]:
    """Make the registry match the file; returns the changes. A dry run rolls them all back."""
    a = _Applier(session, who, prune)
    slug = spec.site.slug
    values: dict[str, Any] = {"name": spec.site.name}
    if spec.site.calendar is not None:
        values["calendar"] = spec.site.calendar.model_dump(mode="json")
    site = a.upsert("site", slug, Site, {"slug": slug}, values)
    if spec.site.wifi:
        stored = session.get(SiteWifi, site.id)
        password = _wifi_password(spec.site.wifi, stored)
        a.upsert(
            "site_wifi", slug, SiteWifi, {"site_id": site.id},
            {"ssid": spec.site.wifi.ssid, "password": password}, hide=("password",),
        )  # fmt: skip
    declared = {device_id for _, _, device_id in node_ids(spec)}
    for b in spec.buildings:
        bkey = f"{slug}/{b.slug}"
        building = a.upsert(
            "building",
            bkey,
            Building,
            {"site_id": site.id, "slug": b.slug},
            {"name": b.name, "address": b.address},
        )
        for f in b.floors:
            fkey = f"{bkey}/{f.name}"
            floor = a.upsert(
                "floor", fkey, Floor, {"building_id": building.id, "name": f.name}, {"level": f.level}
            )
            for r in f.rooms:
                room = a.upsert(
                    "room", f"{fkey}/{r.name}", Room, {"floor_id": floor.id, "name": r.name}, {"use": r.use}
                )
                for n, node in enumerate(r.nodes):
                    device_id = node.id or device_id_for(slug, r.name, ascii_lowercase[n])
                    _node(a, site, room, device_id, node, f"{fkey}/{r.name}")
    _leftovers(a, site, spec, declared)
    if dry_run:
        session.rollback()
    else:
        session.commit()
    return a.changes


def _node(a: _Applier, site: Site, room: Room, device_id: str, node: NodeSpec, where: str) -> None:
    existing = a.s.get(Device, device_id)
    if existing is not None and existing.site_id != site.id:
        raise SiteError(f"device {device_id} belongs to another site: give this node another id")
    values = {
        "site_id": site.id,
        "room_id": room.id,
        "board": node.board,
        "name": node.name,
        "declared": True,
    }
    if existing is None:
        values["lifecycle"] = Lifecycle.provisioned
    a.upsert("device", device_id, Device, {"id": device_id}, values, where=where)
    wanted = {(m.model, m.channel) for m in node.meters}
    for model, channel in sorted(wanted):
        a.upsert("device_sensor", f"{device_id}/{channel}", DeviceSensor,
                 {"device_id": device_id, "model": model, "channel": channel}, {})  # fmt: skip
    for sensor in a.s.exec(select(DeviceSensor).where(DeviceSensor.device_id == device_id)).all():
        if (sensor.model, sensor.channel) not in wanted:
            a.remove("device_sensor", f"{device_id}/{sensor.channel}", sensor, {})


def _leftovers(a: _Applier, site: Site, spec: SiteFile, declared: set[str]) -> None:
    """What the site holds and the file no longer names, from the leaves up."""
    s = a.s
    for device in s.exec(select(Device).where(Device.site_id == site.id, Device.declared)).all():
        if device.id not in declared:
            creds = a.count(DeviceCredential, device_id=device.id, revoked_at=None)
            a.remove(
                "device",
                device.id,
                device,
                {"readings": a.count(Reading, device_id=device.id), "credentials": creds},
            )
    in_file = (
        {(b.slug, f.name, r.name) for b in spec.buildings for f in b.floors for r in f.rooms}
        | {(b.slug, f.name, None) for b in spec.buildings for f in b.floors}
        | {(b.slug, None, None) for b in spec.buildings}
    )
    buildings = s.exec(select(Building).where(Building.site_id == site.id).order_by(Building.slug)).all()
    for building in buildings:
        for floor in s.exec(select(Floor).where(Floor.building_id == building.id).order_by(Floor.name)).all():
            for room in s.exec(select(Room).where(Room.floor_id == floor.id).order_by(Room.name)).all():
                if (building.slug, floor.name, room.name) not in in_file:
                    key = f"{site.slug}/{building.slug}/{floor.name}/{room.name}"
                    a.remove("room", key, room, {"devices": a.count(Device, room_id=room.id)})
            if (building.slug, floor.name, None) not in in_file:
                key = f"{site.slug}/{building.slug}/{floor.name}"
                a.remove("floor", key, floor, {"rooms": a.count(Room, floor_id=floor.id)})
        if (building.slug, None, None) not in in_file:
            a.remove(
                "building",
                f"{site.slug}/{building.slug}",
                building,
                {"floors": a.count(Floor, building_id=building.id)},
            )


# --- looking places up ------------------------------------------------------------------------
def find_room(session: Session, site_slug: str, room: str) -> tuple[Site, Room]:
    """The site and the room named `room` ("2.14", or "building/floor/room" when the name repeats)."""
    site = session.exec(select(Site).where(Site.slug == site_slug)).first()
    if site is None:
        raise SiteError(
            f"unknown site {site_slug!r}: apply its site file first "
            f"(maille site apply sites/{site_slug}.toml)"
        )
    parts = room.split("/")
    query = (
        select(Room, Floor, Building)
        .join(Floor, Floor.id == Room.floor_id)
        .join(Building, Building.id == Floor.building_id)
        .where(Building.site_id == site.id, Room.name == parts[-1])
    )
    if len(parts) == 3:
        query = query.where(Building.slug == parts[0], Floor.name == parts[1])
    found = session.exec(query).all()
    if not found:
        raise SiteError(f"no room {room!r} in site {site_slug}: add it to the site file and apply it")
    if len(found) > 1:
        places = ", ".join(f"{b.slug}/{f.name}/{r.name}" for r, f, b in found)
        raise SiteError(f"room {room!r} is in several places of {site_slug}; name one of: {places}")
    return site, found[0][0]


def site_wifi(session: Session, site: Site) -> dict | None:
    """The site's Wi-Fi as config.json `network` wants it, if the site has one."""
    wifi = session.get(SiteWifi, site.id)
    return {"ssid": wifi.ssid, "password": wifi.password} if wifi else None


# --- the site's calendar (API) ----------------------------------------------------------------
def set_calendar(session: Session, site: Site, calendar: Calendar | None, who: str) -> None:
    """Set (or with None, remove) when the site is occupied; audited; commits. Rollouts start no
    update while it says occupied (fleet.rollouts); insight reads it too."""
    before = audit.snapshot(site)
    site.calendar = None if calendar is None else calendar.model_dump(mode="json")
    session.add(site)
    session.flush()
    audit.record(session, who, "update", "site", site.slug, before, audit.snapshot(site))
    session.commit()
