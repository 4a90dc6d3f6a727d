"""Tables of the fleet: the building registry, devices and their sensors, readings and rollups,
presence per channel, health history, alerts, commands and config, API tokens, the audit log and
rejected messages."""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
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


def fk(target: str, ondelete: str, *, nullable: bool = False, index: bool = True, **kw) -> Any:
    """A foreign key column whose ON DELETE rule the database enforces (SQLite: foreign_keys=ON)."""
    col_type = String(32) if target == "device.id" else Integer()
    return Field(
        sa_column=Column(
            col_type, ForeignKey(target, ondelete=ondelete), nullable=nullable, index=index, **kw
        )
    )


class DeviceStatus(StrEnum):
    """Presence, from the retained `state` and the last will."""

    provisioned = "provisioned"
    online = "online"
    offline = "offline"
    asleep = "asleep"  # offline by its own declared sleep schedule, expected back


class Lifecycle(StrEnum):
    provisioned = "provisioned"
    active = "active"
    retired = "retired"


class Site(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("slug", name="uq_site_slug"),)

    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(max_length=64)
    name: str = Field(max_length=128)
    # When the site is occupied (fleet.calendar.Calendar as JSON); None: no calendar known.
    calendar: dict[str, Any] | None = Field(default=None, sa_type=JSON)


class Building(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("site_id", "slug", name="uq_building_site_slug"),)

    id: int | None = Field(default=None, primary_key=True)
    site_id: int = fk("site.id", "CASCADE")
    slug: str = Field(max_length=64)
    name: str = Field(max_length=128)
    address: str | None = Field(default=None, max_length=256)


class Floor(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("building_id", "name", name="uq_floor_building_name"),)

    id: int | None = Field(default=None, primary_key=True)
    building_id: int = fk("building.id", "CASCADE")
    name: str = Field(max_length=64)
    level: int = 0


class Zone(SQLModel, table=True):
    """An optional grouping of rooms of one building (a wing, a ventilation circuit)."""

    __table_args__ = (UniqueConstraint("building_id", "name", name="uq_zone_building_name"),)

    id: int | None = Field(default=None, primary_key=True)
    building_id: int = fk("building.id", "CASCADE")
    name: str = Field(max_length=64)


class Room(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("floor_id", "name", name="uq_room_floor_name"),)

    id: int | None = Field(default=None, primary_key=True)
    floor_id: int = fk("floor.id", "CASCADE")
    zone_id: int | None = fk("zone.id", "SET NULL", nullable=True)
    name: str = Field(max_length=64)
    use: str | None = Field(default=None, max_length=64)


class Device(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=32)
    site_id: int = Field(foreign_key="site.id", index=True)
    room_id: int | None = fk("room.id", "SET NULL", nullable=True)
    board: str = Field(default="sim", max_length=32)
    fw: str | None = Field(default=None, max_length=32)
    status: str = Field(default=DeviceStatus.provisioned, max_length=16)
    lifecycle: str = Field(default=Lifecycle.provisioned, max_length=16)
    replaced_by: str | None = fk("device.id", "SET NULL", nullable=True, index=False)
    tags: list[str] = Field(default_factory=list, sa_type=JSON)
    last_seen: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_state_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    boot: int | None = None
    reset: str | None = Field(default=None, max_length=24)
    mode: str | None = Field(default=None, max_length=8)
    config_version: int | None = None  # reported by the node (birth or config ack)
    sleep_s: int | None = None  # declared in the birth: offline up to this long is sleep
    boots_base: int | None = None  # boot counter at the start of the reboot-loop window
    boots_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_health: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    stored_seq: int | None = Field(default=None, sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    name: str | None = Field(default=None, max_length=64)  # shown on the label
    # The port or sim:DIR it was last provisioned from: a re-run there finds the same device.
    provisioned_from: str | None = Field(default=None, max_length=256)
    declared: bool = False  # an expected node of a site file (`maille site apply` may prune it)


class SiteWifi(SQLModel, table=True):
    """The Wi-Fi every node of a site joins; the password goes only into the nodes' config.json."""

    __tablename__ = "site_wifi"

    site_id: int = Field(
        sa_column=Column(Integer, ForeignKey("site.id", ondelete="CASCADE"), primary_key=True)
    )
    ssid: str = Field(max_length=64)
    password: str = Field(max_length=128)


class DeviceCredential(SQLModel, table=True):
    """A board's broker password as a Mosquitto $7$ hash (the plaintext is only on the board).

    One unrevoked row per device at most; a replaced or re-provisioned board's row is revoked, kept.
    """

    __tablename__ = "device_credential"

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = fk("device.id", "CASCADE")
    hash: str = Field(max_length=256)
    issued_for: str | None = Field(default=None, max_length=256)  # the port or sim:DIR
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class DeviceSensor(SQLModel, table=True):
    __tablename__ = "device_sensor"

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = fk("device.id", "CASCADE")
    model: str = Field(max_length=32)
    channel: str = Field(max_length=32)
    calibrated_on: date | None = None
    offsets: dict[str, float] = Field(default_factory=dict, sa_type=JSON)


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


class Rollup(SQLModel, table=True):
    """Aggregates of one measurement of one device per time bucket, kept up to date by ingest."""

    device_id: str = Field(
        sa_column=Column(String(32), ForeignKey("device.id", ondelete="CASCADE"), primary_key=True)
    )
    name: str = Field(primary_key=True, max_length=32)
    resolution: str = Field(primary_key=True, max_length=4)
    bucket: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    count: int
    sum: float
    min: float
    max: float
    last: float
    last_ts: datetime = Field(sa_type=UTCDateTime)


class Channel(SQLModel, table=True):
    """Freshness of one measurement of one device: when it last came and how often it comes."""

    device_id: str = Field(
        sa_column=Column(String(32), ForeignKey("device.id", ondelete="CASCADE"), primary_key=True)
    )
    name: str = Field(primary_key=True, max_length=32)
    unit: str | None = Field(default=None, max_length=16)
    last_ts: datetime = Field(sa_type=UTCDateTime)  # the node's time of the newest reading
    last_at: datetime = Field(sa_type=UTCDateTime)  # the fleet's time it arrived
    interval_s: float | None = None  # learned cadence


class HealthReport(SQLModel, table=True):
    """One health message of a node, kept `health_retention_days` for the device page's history.
    `at` is the fleet's receive time (the message carries no node time); (device, boot, uptime) is
    the key that makes a redelivered message land once."""

    __tablename__ = "health"
    __table_args__ = (
        UniqueConstraint("device_id", "boot", "uptime", name="uq_health_device_boot_uptime"),
        Index("ix_health_device_at", "device_id", "at"),
        Index("ix_health_at", "at"),  # retention deletes by age across devices
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    device_id: str = fk("device.id", "CASCADE", index=False)
    at: datetime = Field(sa_type=UTCDateTime)
    uptime: int = Field(sa_type=BigInteger)
    heap_free: int | None = None
    heap_min: int | None = None
    rssi: int | None = None
    reconnects: int | None = None
    outbox: int | None = None
    outbox_flash: int | None = None
    outbox_dropped: int | None = None
    loop_lag_ms: int | None = None
    boot: int | None = None
    reset: str | None = Field(default=None, max_length=24)
    mode: str | None = Field(default=None, max_length=8)
    faults: list[str] | None = Field(default=None, sa_type=JSON)


class Alert(SQLModel, table=True):
    __table_args__ = (Index("ix_alert_open", "resolved_at", "rule", "device_id"),)

    id: int | None = Field(default=None, primary_key=True)
    rule: str = Field(max_length=32)
    device_id: str = fk("device.id", "CASCADE")
    subject: str = Field(default="", max_length=64)  # channel or metric, when the rule is about one
    severity: str = Field(default="warning", max_length=16)
    message: str = Field(max_length=256)
    opened_at: datetime = Field(sa_type=UTCDateTime)
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class DeviceConfig(SQLModel, table=True):
    """The desired remote config of a device; the node reports what it applied on Device."""

    __tablename__ = "device_config"

    device_id: str = Field(
        sa_column=Column(String(32), ForeignKey("device.id", ondelete="CASCADE"), primary_key=True)
    )
    version: int
    settings: dict[str, Any] = Field(sa_type=JSON)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_by: str = Field(max_length=64)
    error: str | None = Field(default=None, max_length=200)  # the node's refusal, if any


class Command(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=40)
    device_id: str = fk("device.id", "CASCADE")
    cmd: str = Field(max_length=32)
    args: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    status: str = Field(default="sent", max_length=8)  # sent, ok, failed
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str = Field(max_length=64)
    acked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    result: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    error: str | None = Field(default=None, max_length=200)


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_token"
    __table_args__ = (
        UniqueConstraint("name", name="uq_api_token_name"),
        UniqueConstraint("hash", name="uq_api_token_hash"),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    role: str = Field(max_length=16)
    site_ids: list[int] | None = Field(default=None, sa_type=JSON)  # None: every site
    metrics: list[str] | None = Field(default=None, sa_type=JSON)  # None: every metric
    # Mosquitto $7$ hash of the same secret: the token's broker account (integrators), or None.
    broker_hash: str | None = Field(default=None, max_length=160)
    hash: str = Field(max_length=64)  # SHA-256 hex of the token; the token itself is never stored
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked: bool = False


class AuditLog(SQLModel, table=True):
    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    who: str = Field(max_length=64)
    action: str = Field(max_length=16)
    entity: str = Field(max_length=32)
    entity_id: str = Field(max_length=64)
    before: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    after: dict[str, Any] | None = Field(default=None, sa_type=JSON)


class Reject(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    reason: str = Field(max_length=16)
    topic: str = Field(max_length=256)
    detail: str = Field(sa_type=Text)
    payload: str = Field(max_length=256)


class Release(SQLModel, table=True):
    """A signed release bundle the fleet stores and serves (`maille release publish`)."""

    __table_args__ = (UniqueConstraint("version", "arch", name="uq_release_version_arch"),)

    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(max_length=32)
    arch: str = Field(max_length=16)
    rollback: bool = False  # signed as an explicit rollback release
    manifest_sha256: str = Field(max_length=64)
    key_id: str = Field(max_length=16)  # the release key that signed it
    path: str = Field(max_length=96)  # its folder under the bundle store, served as releases/<path>/
    files: int = 0
    size: int = Field(default=0, sa_type=BigInteger)  # compressed bytes of all its files
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str = Field(max_length=64)


class RolloutStatus(StrEnum):
    running = "running"
    paused = "paused"
    completed = "completed"
    halted = "halted"  # stopped by itself: a threshold or the data-continuity gate
    aborted = "aborted"


class Rollout(SQLModel, table=True):
    """A release offered to a chosen set of devices, wave by wave (fleet/rollouts.py)."""

    id: int | None = Field(default=None, primary_key=True)
    release_id: int = fk("release.id", "RESTRICT")
    name: str = Field(default="", max_length=64)
    status: str = Field(default=RolloutStatus.running, max_length=16)
    reason: str | None = Field(default=None, max_length=256)  # why it halted or was aborted
    spec: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)  # fleet.rollouts.RolloutSpec
    wave: int = 0  # the wave in progress
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    created_by: str = Field(max_length=64)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class RolloutWave(SQLModel, table=True):
    __tablename__ = "rollout_wave"
    __table_args__ = (UniqueConstraint("rollout_id", "index", name="uq_rollout_wave_index"),)

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = fk("rollout.id", "CASCADE")
    index: int
    size: int
    # pending, running, gate, passed, failed; halted or aborted (under way), cancelled (not started)
    status: str = Field(default="pending", max_length=16)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    done_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # every target settled
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    gate: dict[str, Any] | None = Field(default=None, sa_type=JSON)  # the continuity gate's findings


class RolloutTarget(SQLModel, table=True):
    """One device of a rollout: its wave and where its update stands."""

    __tablename__ = "rollout_target"
    __table_args__ = (UniqueConstraint("rollout_id", "device_id", name="uq_rollout_target_device"),)

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = fk("rollout.id", "CASCADE")
    device_id: str = fk("device.id", "CASCADE")
    site_id: int
    wave: int
    # pending, offered (the node is working on it), confirmed, rolled_back, failed, timed_out, cancelled
    state: str = Field(default="pending", max_length=16)
    node_state: str | None = Field(default=None, max_length=16)  # the node's last ota/status state
    progress: int | None = None
    reason: str | None = Field(default=None, max_length=200)
    attempt: int = 0  # offers sent; the offer's `attempt` is attempt - 1
    from_version: str | None = Field(default=None, max_length=32)
    running: str | None = Field(default=None, max_length=32)  # as the node last reported
    channels: dict[str, float | None] = Field(default_factory=dict, sa_type=JSON)  # before: name → cadence
    not_before: datetime | None = Field(default=None, sa_type=UTCDateTime)  # randomized start
    offered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
