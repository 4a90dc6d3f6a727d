"""Tables of the fleet: sites, devices, readings and the bounded list of rejected messages."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Index, Integer, Text, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

REJECTS_KEPT = 10_000


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in and out, also on SQLite which stores datetimes without an offset."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else as_utc(value)


# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid), not a BIGINT one.
BigId = BigInteger().with_variant(Integer, "sqlite")


class DeviceStatus(StrEnum):
    provisioned = "provisioned"
    online = "online"
    offline = "offline"


class Site(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("slug", name="uq_site_slug"),)

    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(max_length=64)
    name: str = Field(max_length=128)


class Device(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=32)
    site_id: int = Field(foreign_key="site.id", index=True)
    room: str = Field(max_length=64)
    board: str = Field(default="sim", max_length=32)
    fw: str | None = Field(default=None, max_length=32)
    status: str = Field(default=DeviceStatus.provisioned, max_length=16)
    last_seen: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_state_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    boot: int | None = None
    reset: str | None = Field(default=None, max_length=24)
    last_health: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    stored_seq: int | None = Field(default=None, sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Reading(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("device_id", "seq", "name", name="uq_reading_device_seq_name"),
        Index("ix_reading_device_name_ts", "device_id", "name", "ts"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    device_id: str = Field(foreign_key="device.id", max_length=32)
    seq: int = Field(sa_type=BigInteger)
    name: str = Field(max_length=32)
    unit: str | None = Field(default=None, max_length=16)
    value: float
    ts: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Reject(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    reason: str = Field(max_length=16)
    topic: str = Field(max_length=256)
    detail: str = Field(sa_type=Text)
    payload: str = Field(max_length=256)
