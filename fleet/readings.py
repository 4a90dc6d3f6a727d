"""Reading queries for the API: raw rows, or rollup buckets at a chosen resolution (dashboards never
scan raw rows), for one device or every device of a room."""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime

from pydantic import BaseModel
from sqlmodel import Session, col, select

from fleet.models import Device, Reading, Rollup
from fleet.rollups import RESOLUTIONS

RAW = "raw"


def devices_in_room(session: Session, room_id: int) -> list[str]:
    return list(session.exec(select(Device.id).where(Device.room_id == room_id).order_by(Device.id)).all())


def raw(
    session: Session,
    device_ids: Sequence[str],
    *,
    metric: str | None = None,
    metrics: Collection[str] | None = None,  # only these (a token limited to some metrics)
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
) -> list[Reading]:
    """The latest `limit` readings in [since, until], returned oldest first."""
    query = select(Reading).where(col(Reading.device_id).in_(device_ids))
    if metric:
        query = query.where(Reading.name == metric)
    if metrics is not None:
        query = query.where(col(Reading.name).in_(sorted(metrics)))
    if since:
        query = query.where(Reading.ts >= since)
    if until:
        query = query.where(Reading.ts <= until)
    query = query.order_by(col(Reading.ts).desc(), col(Reading.id).desc()).limit(limit)
    return list(reversed(session.exec(query).all()))


def rolled(
    session: Session,
    device_ids: Sequence[str],
    resolution: str,
    *,
    metric: str | None = None,
    metrics: Collection[str] | None = None,  # only these (a token limited to some metrics)
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
) -> list[Rollup]:
    """The latest `limit` buckets starting in [since, until], oldest first."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of raw, {', '.join(RESOLUTIONS)}")
    query = select(Rollup).where(col(Rollup.device_id).in_(device_ids), Rollup.resolution == resolution)
    if metric:
        query = query.where(Rollup.name == metric)
    if metrics is not None:
        query = query.where(col(Rollup.name).in_(sorted(metrics)))
    if since:
        query = query.where(Rollup.bucket >= since)
    if until:
        query = query.where(Rollup.bucket <= until)
    query = query.order_by(col(Rollup.bucket).desc(), Rollup.device_id, Rollup.name).limit(limit)
    return list(reversed(session.exec(query).all()))


def to_csv(rows: Iterable[BaseModel], model: type[BaseModel]) -> str:
    """CSV with a header of the model's fields; datetimes in ISO-8601."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(model.model_fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(row.model_dump(mode="json") for row in rows)
    return out.getvalue()
