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
LEVELS = sorted(RESOLUTIONS.items(), key=lambda item: item[1])  # each divides the next


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

    def merge(self, other: Agg) -> None:
        """Fold in the aggregate of readings that came after this one's (a later bucket, or later in
        the batch): on equal times, as `add`, the later one's `last` wins."""
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        if other.last_ts >= self.last_ts:
            self.last, self.last_ts = other.last, other.last_ts


def aggregate(readings: Iterable[tuple[str, str, float, datetime]]) -> dict[tuple, Agg]:
    """(device_id, name, value, ts) rows folded into {(device_id, name, resolution, bucket): Agg}.

    Each reading is folded once, into its finest bucket; each coarser resolution is then folded from
    the one below it (every resolution divides the next), so a batch holding several readings of a
    device per minute costs one dictionary step per reading, not one per reading and resolution."""
    level: dict[tuple[str, str, int], Agg] = {}
    (finest, seconds), *coarser = LEVELS
    for device_id, name, value, ts in readings:
        epoch = int(ts.timestamp())  # as bucket_of
        key = (device_id, name, epoch - epoch % seconds)
        agg = level.get(key)
        if agg is None:
            level[key] = Agg(1, value, value, value, value, ts)
        else:  # Agg.add, inlined: this loop runs once per reading
            agg.count += 1
            agg.sum += value
            if value < agg.min:
                agg.min = value
            if value > agg.max:
                agg.max = value
            if ts >= agg.last_ts:
                agg.last, agg.last_ts = value, ts
    starts: dict[int, datetime] = {}  # bucket start (epoch s) → its datetime, made once per batch

    def start_of(epoch: int) -> datetime:
        bucket = starts.get(epoch)
        if bucket is None:
            bucket = starts[epoch] = datetime.fromtimestamp(epoch, UTC)
        return bucket

    out = {(d, n, finest, start_of(start)): agg for (d, n, start), agg in level.items()}
    for resolution, seconds in coarser:
        below, level = level, {}
        for (device_id, name, start), agg in below.items():
            key = (device_id, name, start - start % seconds)
            up = level.get(key)
            if up is None:
                level[key] = Agg(agg.count, agg.sum, agg.min, agg.max, agg.last, agg.last_ts)
            else:
                up.merge(agg)
        out.update(((d, n, resolution, start_of(start)), agg) for (d, n, start), agg in level.items())
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


_MERGE = (
    "ON CONFLICT (device_id, name, resolution, bucket) DO UPDATE SET "
    "count = rollup.count + excluded.count, sum = rollup.sum + excluded.sum, "
    "min = {least}(rollup.min, excluded.min), max = {greatest}(rollup.max, excluded.max), "
    "last = CASE WHEN excluded.last_ts >= rollup.last_ts THEN excluded.last ELSE rollup.last END, "
    "last_ts = {greatest}(rollup.last_ts, excluded.last_ts)"
)
# SQLite: one prepared statement run by executemany (in-process, each row costs little).
SQLITE_UPSERT = (
    f"INSERT INTO rollup ({', '.join(_COLUMNS)}) VALUES ({', '.join(['?'] * len(_COLUMNS))}) "
    + _MERGE.format(least="min", greatest="max")
)
# PostgreSQL: the whole batch as one array per column (binary parameters), one statement: a row per
# statement, even pipelined, costs psycopg more than the server's work.
PG_UPSERT = (
    f"INSERT INTO rollup ({', '.join(_COLUMNS)}) "
    "SELECT * FROM unnest(%b::varchar[], %b::varchar[], %b::varchar[], %b::timestamptz[], %b::bigint[], "
    "%b::float8[], %b::float8[], %b::float8[], %b::float8[], %b::timestamptz[]) "
    + _MERGE.format(least="least", greatest="greatest")
)


def upsert(session: Session, aggs: dict[tuple, Agg]) -> None:
    """Merge pre-aggregated buckets into the rollup table, in key order (concurrent ingest workers
    then lock rows in the same order and cannot deadlock each other)."""
    if not aggs:
        return
    conn = session.connection()
    dialect = conn.dialect.name
    t = _memo(db_time(dialect))
    items = sorted(aggs.items(), key=lambda item: item[0])
    if dialect == "postgresql":
        # floats made sure: psycopg dumps an array of one type, and a value may have come as an int
        rows = [
            (
                k[0],
                k[1],
                k[2],
                t(k[3]),
                a.count,
                float(a.sum),
                float(a.min),
                float(a.max),
                float(a.last),
                t(a.last_ts),
            )
            for k, a in items
        ]
        conn.exec_driver_sql(PG_UPSERT, tuple(list(c) for c in zip(*rows, strict=True)))
        return
    rows = [(k[0], k[1], k[2], t(k[3]), a.count, a.sum, a.min, a.max, a.last, t(a.last_ts)) for k, a in items]
    conn.exec_driver_sql(SQLITE_UPSERT, rows)
