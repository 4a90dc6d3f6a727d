"""Health history: every health message a node sends, kept for a while so an operator can see how
its heap, signal and loop lag went and when it rebooted or its faults changed.

Written by ingest in the batch's transaction, once per (device, boot, uptime) whatever the
redeliveries; pruned by age on the alert evaluator's pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from fleet import contract
from fleet.models import HealthReport

COLUMNS = tuple(c for c in HealthReport.model_fields if c != "id")
_INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def row(device_id: str, msg: contract.Health, at: datetime) -> dict[str, Any]:
    """The table row of one health message received at `at`."""
    fields = msg.model_dump(include=set(COLUMNS))
    return {**{c: None for c in COLUMNS}, **fields, "device_id": device_id, "at": at}


def insert(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Store health rows; one already stored (same device, boot and uptime) is skipped."""
    if not rows:
        return
    dialect = session.connection().dialect.name
    stmt = _INSERT[dialect](HealthReport).on_conflict_do_nothing(
        index_elements=["device_id", "boot", "uptime"]
    )
    session.execute(stmt, list(rows))


def prune(session: Session, now: datetime, keep: timedelta) -> int:
    """Delete health rows received before `now - keep`; returns how many went."""
    gone = session.execute(delete(HealthReport).where(col(HealthReport.at) < now - keep))
    session.commit()
    return gone.rowcount


def history(
    session: Session,
    device_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
) -> list[HealthReport]:
    """The latest `limit` health rows of a device received in [since, until], oldest first."""
    query = _window(select(HealthReport), device_id, since, until)
    query = query.order_by(col(HealthReport.at).desc(), col(HealthReport.id).desc()).limit(limit)
    return list(reversed(session.exec(query).all()))


CHARTED = ("heap_free", "heap_min", "rssi", "loop_lag_ms")
_h = HealthReport.__table__.c
_TRACE = (_h.at, _h.uptime, _h.boot, _h.reset, _h.faults, *(_h[name] for name in CHARTED))


def trace(session: Session, device_id: str, since: datetime, until: datetime) -> list[Any]:
    """All of a device's health rows in [since, until], oldest first, only the columns the device
    page draws and compares (plain rows: a month of them is tens of thousands)."""
    query = _window(select(*_TRACE), device_id, since, until).order_by(_h.at, _h.id)
    return list(session.execute(query))


def _window(query, device_id: str, since: datetime | None, until: datetime | None):
    query = query.where(_h.device_id == device_id)
    if since:
        query = query.where(_h.at >= since)
    if until:
        query = query.where(_h.at <= until)
    return query


class Change(BaseModel):
    """A reboot, a reset cause, or a change in the fault list, as the device page lists them."""

    at: datetime
    what: str
    detail: str


def changes(rows: Sequence[Any]) -> list[Change]:
    """What changed between consecutive health rows (oldest first): boot, reset cause, faults."""
    found: list[Change] = []
    for before, after in zip(rows, rows[1:], strict=False):
        if after.boot != before.boot or after.uptime < before.uptime:
            found.append(Change(at=after.at, what="reboot", detail=f"boot {after.boot}, reset {after.reset}"))
        elif after.reset != before.reset:
            found.append(Change(at=after.at, what="reset", detail=f"{before.reset} → {after.reset}"))
        if (after.faults or []) != (before.faults or []):
            detail = "; ".join(after.faults or []) or "cleared"
            found.append(Change(at=after.at, what="faults", detail=detail))
    return found


class VitalsOut(BaseModel):
    """One stored health message, as the API returns it."""

    model_config = ConfigDict(from_attributes=True)

    device_id: str
    at: datetime
    uptime: int
    heap_free: int | None
    heap_min: int | None
    rssi: int | None
    reconnects: int | None
    outbox: int | None
    outbox_flash: int | None
    outbox_dropped: int | None
    loop_lag_ms: int | None
    boot: int | None
    reset: str | None
    mode: str | None
    faults: list[str] | None
