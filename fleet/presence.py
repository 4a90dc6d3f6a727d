"""Presence and freshness: what the node's state, health and readings say about it being there.

Online/offline comes from the retained `state` birth and the last will. A node that declares a sleep
schedule (`sleep` in its birth) is `asleep`, not offline, for that long after it goes away. Each
measurement channel learns its cadence from the readings' own times, so a channel that stops while
its node is online can be flagged stale.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam
from sqlmodel import Session, select

from fleet import contract, rollups
from fleet.models import Channel, Device, DeviceStatus

LEARN = 0.2  # weight of a new gap in the learned cadence
OUTAGE = 4.0  # a gap this many times the cadence is an outage, not a new cadence: learn it slowly


@dataclass(frozen=True)
class PresenceRules:
    reboot_window_s: float = 3600.0  # boots are counted over this window for the reboot-loop alert


def apply_state(device: Device, msg: contract.State, at: datetime, rules: PresenceRules) -> None:
    device.last_state_at = at
    if msg.state == "offline":
        device.status = DeviceStatus.asleep if device.sleep_s else DeviceStatus.offline
        return
    device.status = DeviceStatus.online
    device.fw = msg.fw or device.fw
    device.board = msg.board or device.board
    device.reset = msg.reset or device.reset
    device.mode = msg.mode or device.mode
    device.sleep_s = msg.sleep
    if msg.config is not None:
        device.config_version = msg.config
    if msg.boot is not None:
        window = timedelta(seconds=rules.reboot_window_s)
        if (
            device.boots_since is None
            or at - device.boots_since > window
            or msg.boot < (device.boots_base or 0)
        ):
            device.boots_base, device.boots_since = msg.boot, at
        device.boot = msg.boot


def apply_health(device: Device, msg: contract.Health) -> None:
    device.last_health = msg.model_dump(mode="json", exclude_unset=True)  # as sent
    device.mode = msg.mode or device.mode


def wake_overdue(session: Session, now: datetime) -> list[str]:
    """Sleepers not back within their declared sleep become offline, from the end of their sleep."""
    overdue = []
    for device in session.exec(select(Device).where(Device.status == DeviceStatus.asleep)).all():
        back_by = device.last_state_at + timedelta(seconds=device.sleep_s or 0)
        if now > back_by:
            device.status, device.last_state_at = DeviceStatus.offline, back_by
            overdue.append(device.id)
    return overdue


_CHANNEL_COLUMNS = ("device_id", "name", "unit", "last_ts", "last_at", "interval_s")


def _channel_upsert_sql(dialect: str) -> str:
    ph = "?" if dialect == "sqlite" else "%s"
    return (
        f"INSERT INTO channel ({', '.join(_CHANNEL_COLUMNS)}) VALUES ({', '.join([ph] * 6)}) "
        "ON CONFLICT (device_id, name) DO UPDATE SET unit = excluded.unit, last_ts = excluded.last_ts, "
        "last_at = excluded.last_at, interval_s = excluded.interval_s"
    )


CHANNEL_UPSERT_SQL = {d: _channel_upsert_sql(d) for d in ("sqlite", "postgresql")}
_channel = Channel.__table__.c
KNOWN_CHANNELS = select(
    _channel.device_id, _channel.name, _channel.last_ts, _channel.last_at, _channel.interval_s
).where(_channel.device_id.in_(bindparam("ids", expanding=True)))


def update_channels(session: Session, rows: list[tuple]) -> None:
    """Fold newly stored readings, (device_id, seq, name, unit, value, ts, received_at) rows, into each
    channel's last time and learned cadence."""
    by_channel: dict[tuple[str, str], list[tuple]] = defaultdict(list)
    for row in rows:
        by_channel[(row[0], row[2])].append(row)
    if not by_channel:
        return
    keys = sorted(by_channel)
    conn = session.connection()
    known = {
        (d, n): (last_ts, last_at, interval)
        for d, n, last_ts, last_at, interval in conn.execute(
            KNOWN_CHANNELS, {"ids": sorted({k[0] for k in keys})}
        )
    }
    dialect = conn.dialect.name
    t = rollups.db_time(dialect)
    values = []
    for key in keys:
        last_ts, last_at, interval = known.get(key, (None, None, None))
        for _, _, _, _, _, ts, at in sorted(by_channel[key], key=lambda r: r[5]):
            if last_ts is not None and ts > last_ts:
                interval = learn(interval, (ts - last_ts).total_seconds())
            last_ts = ts if last_ts is None else max(last_ts, ts)
            last_at = at if last_at is None else max(last_at, at)
        unit = by_channel[key][-1][3]
        values.append((key[0], key[1], unit, t(last_ts), t(last_at), interval))
    conn.exec_driver_sql(CHANNEL_UPSERT_SQL[dialect], values)


def learn(interval: float | None, gap: float) -> float:
    if interval is None:
        return gap
    if gap > OUTAGE * interval:
        return interval * 1.5
    return (1 - LEARN) * interval + LEARN * gap
