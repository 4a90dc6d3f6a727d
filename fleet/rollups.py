"""Rollups: per device, measurement and time bucket, count/sum/min/max/last, maintained incrementally.

Ingest folds each batch's new readings into the buckets in the same transaction as the raw insert, so
a reading is counted in its rollups exactly when it is stored. Buckets are aligned on UTC epoch
multiples (a day bucket is a UTC day).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import case, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from fleet.models import Rollup

RESOLUTIONS = {"1m": 60, "15m": 900, "1h": 3600, "1d": 86400}
UPSERT_CHUNK = 400  # rows per statement: 10 columns each, under SQLite's parameter limit
DIALECT_INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def bucket_of(ts: datetime, seconds: int) -> datetime:
    epoch = int(ts.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


@dataclass
class Agg:
    count: int
    sum: float
    min: float
    max: float
    last: float
    last_ts: datetime

    def add(self, value: float, ts: datetime) -> None:
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        if ts >= self.last_ts:
            self.last, self.last_ts = value, ts


def aggregate(readings: Iterable[tuple[str, str, float, datetime]]) -> dict[tuple, Agg]:
    """(device_id, name, value, ts) rows folded into {(device_id, name, resolution, bucket): Agg}."""
    out: dict[tuple, Agg] = {}
    for device_id, name, value, ts in readings:
        for resolution, seconds in RESOLUTIONS.items():
            key = (device_id, name, resolution, bucket_of(ts, seconds))
            agg = out.get(key)
            if agg is None:
                out[key] = Agg(1, value, value, value, value, ts)
            else:
                agg.add(value, ts)
    return out


def upsert(session: Session, aggs: dict[tuple, Agg]) -> None:
    """Merge pre-aggregated buckets into the rollup table, in key order (concurrent ingest workers
    then lock rows in the same order and cannot deadlock each other)."""
    dialect = session.get_bind().dialect.name
    least, greatest = (func.min, func.max) if dialect == "sqlite" else (func.least, func.greatest)
    t = Rollup.__table__.c
    rows = [
        {
            "device_id": k[0],
            "name": k[1],
            "resolution": k[2],
            "bucket": k[3],
            "count": a.count,
            "sum": a.sum,
            "min": a.min,
            "max": a.max,
            "last": a.last,
            "last_ts": a.last_ts,
        }
        for k, a in sorted(aggs.items(), key=lambda item: item[0])
    ]
    for start in range(0, len(rows), UPSERT_CHUNK):
        stmt = DIALECT_INSERT[dialect](Rollup).values(rows[start : start + UPSERT_CHUNK])
        new = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=["device_id", "name", "resolution", "bucket"],
            set_={
                "count": t.count + new.count,
                "sum": t.sum + new.sum,
                "min": least(t.min, new.min),
                "max": greatest(t.max, new.max),
                "last": case((new.last_ts >= t.last_ts, new.last), else_=t.last),
                "last_ts": greatest(t.last_ts, new.last_ts),
            },
        )
        session.exec(stmt)
