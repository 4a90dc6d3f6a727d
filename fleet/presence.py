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

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select, tuple_

from fleet import contract
from fleet.models import Channel, Device, DeviceStatus

DIALECT_INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
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


def update_channels(session: Session, rows: list[dict]) -> None:
    """Fold newly stored readings into each channel's last time and learned cadence."""
    by_channel: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        by_channel[(row["device_id"], row["name"])].append(row)
    keys = sorted(by_channel)
    known = {
        (c.device_id, c.name): c
        for c in session.exec(
            select(Channel).where(tuple_(col(Channel.device_id), col(Channel.name)).in_(keys))
        ).all()
    }
    values = []
    for key in keys:
        old = known.get(key)
        last_ts, interval = (old.last_ts, old.interval_s) if old else (None, None)
        last_at = old.last_at if old else None
        for row in sorted(by_channel[key], key=lambda r: r["ts"]):
            if last_ts is not None and row["ts"] > last_ts:
                interval = learn(interval, (row["ts"] - last_ts).total_seconds())
            last_ts = row["ts"] if last_ts is None else max(last_ts, row["ts"])
            last_at = row["received_at"] if last_at is None else max(last_at, row["received_at"])
        unit = by_channel[key][-1]["unit"]
        values.append(
            {
                "device_id": key[0],
                "name": key[1],
                "unit": unit,
                "last_ts": last_ts,
                "last_at": last_at,
                "interval_s": interval,
            }
        )
    stmt = DIALECT_INSERT[session.get_bind().dialect.name](Channel).values(values)
    session.exec(
        stmt.on_conflict_do_update(
            index_elements=["device_id", "name"],
            set_={k: stmt.excluded[k] for k in ("unit", "last_ts", "last_at", "interval_s")},
        )
    )


def learn(interval: float | None, gap: float) -> float:
    if interval is None:
        return gap
    if gap > OUTAGE * interval:
        return interval * 1.5
    return (1 - LEARN) * interval + LEARN * gap
