"""Rollups: per device, measurement and time bucket, count/sum/min/max/last, maintained incrementally.

Ingest folds each batch's new readings into the buckets in the same transaction as the raw insert, so
a reading is counted in its rollups exactly when it is stored. Buckets are aligned on UTC epoch
multiples (a day bucket is a UTC day).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlmodel import Session

from fleet.models import as_utc

RESOLUTIONS = {"1m": 60, "15m": 900, "1h": 3600, "1d": 86400}


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
    starts: dict[int, datetime] = {}  # bucket start (epoch s) → its datetime, made once per batch
    resolutions = tuple(RESOLUTIONS.items())
    for device_id, name, value, ts in readings:
        epoch = int(ts.timestamp())  # as bucket_of
        for resolution, seconds in resolutions:
            start = epoch - epoch % seconds
            bucket = starts.get(start)
            if bucket is None:
                bucket = starts[start] = datetime.fromtimestamp(start, UTC)
            key = (device_id, name, resolution, bucket)
            agg = out.get(key)
            if agg is None:
                out[key] = Agg(1, value, value, value, value, ts)
            else:  # Agg.add, inlined: this loop runs four times per reading
                agg.count += 1
                agg.sum += value
                if value < agg.min:
                    agg.min = value
                if value > agg.max:
                    agg.max = value
                if ts >= agg.last_ts:
                    agg.last, agg.last_ts = value, ts
    return out


def db_time(dialect: str):
    """How a datetime is bound on `dialect` by raw DB-API statements: PostgreSQL takes aware datetimes;
    on SQLite the text must be exactly what SQLAlchemy's DateTime writes (UTC, 'YYYY-MM-DD
    HH:MM:SS.ffffff'), since keys and comparisons on these columns are text comparisons there."""
    if dialect == "sqlite":
        return lambda dt: as_utc(dt).replace(tzinfo=None).isoformat(" ", "microseconds")
    return as_utc


def _memo(f):
    """`f` remembering its answers (bucket starts and reading times repeat within a batch)."""
    seen: dict = {}

    def g(x):
        out = seen.get(x)
        if out is None:
            out = seen[x] = f(x)
        return out

    return g


_COLUMNS = ("device_id", "name", "resolution", "bucket", "count", "sum", "min", "max", "last", "last_ts")


def _upsert_sql(dialect: str) -> str:
    ph = "?" if dialect == "sqlite" else "%s"
    least, greatest = ("min", "max") if dialect == "sqlite" else ("least", "greatest")
    return (
        f"INSERT INTO rollup ({', '.join(_COLUMNS)}) VALUES ({', '.join([ph] * len(_COLUMNS))}) "
        "ON CONFLICT (device_id, name, resolution, bucket) DO UPDATE SET "
        "count = rollup.count + excluded.count, sum = rollup.sum + excluded.sum, "
        f"min = {least}(rollup.min, excluded.min), max = {greatest}(rollup.max, excluded.max), "
        "last = CASE WHEN excluded.last_ts >= rollup.last_ts THEN excluded.last ELSE rollup.last END, "
        f"last_ts = {greatest}(rollup.last_ts, excluded.last_ts)"
    )


UPSERT_SQL = {d: _upsert_sql(d) for d in ("sqlite", "postgresql")}


def upsert(session: Session, aggs: dict[tuple, Agg]) -> None:
    """Merge pre-aggregated buckets into the rollup table, in key order (concurrent ingest workers
    then lock rows in the same order and cannot deadlock each other). One prepared statement, run
    with the DB-API's executemany (PostgreSQL: psycopg pipelines it)."""
    if not aggs:
        return
    conn = session.connection()
    dialect = conn.dialect.name
    t = _memo(db_time(dialect))
    rows = [
        (k[0], k[1], k[2], t(k[3]), a.count, a.sum, a.min, a.max, a.last, t(a.last_ts))
        for k, a in sorted(aggs.items(), key=lambda item: item[0])
    ]
    conn.exec_driver_sql(UPSERT_SQL[dialect], rows)
