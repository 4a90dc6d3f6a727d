"""Typed request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet.auth import Role, broker_user
from fleet.contract import CommandName
from fleet.models import Alert, Channel, Command, DeviceConfig, Rollup
from fleet.registry import DeviceRow

Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")]
Name = Annotated[str, Field(min_length=1, max_length=64)]
DeviceId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{2,31}$")]
Tags = Annotated[list[Annotated[str, Field(pattern=r"^[a-z0-9_:.-]{1,32}$")]], Field(max_length=32)]
LifecycleName = Literal["provisioned", "active", "retired"]


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str


class HealthOut(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    # "subscribed": every ingest worker of this process holds its broker subscription; "none": an
    # API-only process. A worker that is not subscribed makes /healthz answer 503.
    ingest: Literal["subscribed", "none"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteIn(_In):
    slug: Slug
    name: Annotated[str, Field(min_length=1, max_length=128)]


class SitePatch(_In):
    slug: Slug | None = None
    name: Annotated[str, Field(min_length=1, max_length=128)] | None = None


class BuildingIn(_In):
    site_id: int
    slug: Slug
    name: Annotated[str, Field(min_length=1, max_length=128)]
    address: Annotated[str, Field(max_length=256)] | None = None


class BuildingPatch(_In):
    slug: Slug | None = None
    name: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    address: Annotated[str, Field(max_length=256)] | None = None


class FloorIn(_In):
    building_id: int
    name: Name
    level: int = 0


class FloorPatch(_In):
    name: Name | None = None
    level: int | None = None


class ZoneIn(_In):
    building_id: int
    name: Name


class ZonePatch(_In):
    name: Name | None = None


class RoomIn(_In):
    floor_id: int
    name: Name
    zone_id: int | None = None
    use: Annotated[str, Field(max_length=64)] | None = None


class RoomPatch(_In):
    name: Name | None = None
    zone_id: int | None = None
    use: Annotated[str, Field(max_length=64)] | None = None


class DeviceIn(_In):
    id: DeviceId
    site: Slug
    room_id: int | None = None
    board: Annotated[str, Field(max_length=32)] = "sim"
    tags: Tags = []
    lifecycle: Literal["provisioned", "active"] = "provisioned"


class DevicePatch(_In):
    room_id: int | None = None
    board: Annotated[str, Field(max_length=32)] | None = None
    tags: Tags | None = None
    lifecycle: LifecycleName | None = None
    replaced_by: DeviceId | None = None


class DeviceOut(BaseModel):
    id: str
    site: str
    room: str | None
    room_id: int | None
    board: str
    fw: str | None
    status: Literal["provisioned", "online", "offline", "asleep"]
    lifecycle: LifecycleName
    replaced_by: str | None
    tags: list[str]
    mode: str | None
    config_version: int | None
    sleep_s: int | None
    last_seen: datetime | None
    last_state_at: datetime | None
    boot: int | None
    reset: str | None
    stored_seq: int | None
    last_health: dict[str, Any] | None
    created_at: datetime

    @classmethod
    def of(cls, row: DeviceRow) -> DeviceOut:
        return cls.model_validate(
            {**row.device.model_dump(), "site": row.site.slug, "room": row.room.name if row.room else None}
        )


class SensorIn(_In):
    model: Annotated[str, Field(min_length=1, max_length=32)]
    channel: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")]
    calibrated_on: date | None = None
    offsets: dict[str, float] = {}


class ReadingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    device: str = Field(validation_alias="device_id")
    seq: int
    name: str
    unit: str | None
    value: float
    ts: datetime


class BucketOut(BaseModel):
    device: str
    name: str
    bucket: datetime
    count: int
    mean: float
    min: float
    max: float
    last: float

    @classmethod
    def of(cls, r: Rollup) -> BucketOut:
        return cls(
            device=r.device_id,
            name=r.name,
            bucket=r.bucket,
            count=r.count,
            mean=r.sum / r.count,
            min=r.min,
            max=r.max,
            last=r.last,
        )


class ChannelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    unit: str | None
    last_ts: datetime
    last_at: datetime
    interval_s: float | None

    @classmethod
    def of(cls, c: Channel) -> ChannelOut:
        return cls.model_validate(c)


class RejectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    reason: str
    topic: str
    detail: str
    payload: str


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    who: str
    action: str
    entity: str
    entity_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AlertOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    rule: str
    device_id: str
    subject: str
    severity: str
    message: str
    opened_at: datetime
    resolved_at: datetime | None

    @classmethod
    def of(cls, a: Alert) -> AlertOut:
        return cls.model_validate(a)


class CommandIn(_In):
    cmd: CommandName
    args: dict[str, Any] = {}
    expires_in_s: Annotated[int, Field(ge=1, le=30 * 86400)] | None = None


class CommandOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    device_id: str
    cmd: str
    args: dict[str, Any]
    status: Literal["sent", "ok", "failed"]
    created_at: datetime
    created_by: str
    acked_at: datetime | None
    result: dict[str, Any] | None
    error: str | None

    @classmethod
    def of(cls, c: Command) -> CommandOut:
        return cls.model_validate(c)


class ConfigOut(BaseModel):
    """Desired (what the fleet asks) against reported (what the node says it applied)."""

    device_id: str
    desired_version: int | None
    settings: dict[str, Any] | None
    updated_at: datetime | None
    updated_by: str | None
    reported_version: int | None
    in_sync: bool
    error: str | None

    @classmethod
    def of(cls, device_id: str, desired: DeviceConfig | None, reported: int | None) -> ConfigOut:
        return cls(
            device_id=device_id,
            desired_version=desired.version if desired else None,
            settings=desired.settings if desired else None,
            updated_at=desired.updated_at if desired else None,
            updated_by=desired.updated_by if desired else None,
            reported_version=reported,
            in_sync=desired is None or desired.version == reported,
            error=desired.error if desired else None,
        )


class TokenIn(_In):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
    role: Role
    sites: list[Slug] = []
    metrics: list[Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")]] = []  # none: every metric
    broker: bool = False  # a broker account reading the token's sites' topics (`token.<name>`)


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    role: Role
    site_ids: list[int] | None
    metrics: list[str] | None = None
    broker_user: str | None = None  # its broker account, if it has one
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool

    @model_validator(mode="before")
    @classmethod
    def _broker_user(cls, token: Any) -> Any:
        if getattr(token, "broker_hash", None):
            public = token.model_dump(exclude={"hash", "broker_hash"})
            return public | {"broker_user": broker_user(token.name)}
        return token


class NewTokenOut(TokenOut):
    token: str = Field(description="shown once: store it now")
