"""Query benchmark: p50/p99 of the dashboard's queries over `--rows` (10 million) stored readings.

Data: `--devices` devices (default 500) in rooms of `--per-room` (default 5), each sending temperature
and humidity, evenly spaced over the last `--days` (default 35) days, so 10M rows is one reading per
device and measurement every ~5 minutes. Rows are written straight into the `reading` table in one
transaction (SQLite executemany) or with COPY (PostgreSQL), in time order across devices as ingest
would; the schema is the fleet's own (Alembic migrations of the code measured).

Queries, for a random room each time (its devices, both measurements):
- `raw_24h`, `raw_30d`: the raw readings of the room over the last 24 h / 30 days, through the fleet's
  own query function (`fleet.readings.raw` for a room; before it existed, `fleet.registry.readings`
  per device of the room);
- `rollup_24h_15m`, `rollup_30d_1h`: the same windows from the rollup table at 15 min / 1 h
  (`fleet.readings.rolled`), when the code measured has rollups; the rollup table is filled from the
  generated readings with one INSERT … SELECT … GROUP BY per resolution (what ingest's incremental
  upserts would have left). Adding a query is one entry in `QUERIES`.

Usage: run.py [--rows 10000000] [--db sqlite|postgres|both] [--samples 200] [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import finish, fresh_database, log, machine, postgres_available, source  # noqa: E402

METRICS = (("temperature", "Cel", 21.0), ("humidity", "%RH", 45.0))
LIMIT = 1_000_000  # the dashboard wants the whole window, not the default page of 1,000


# --- the queries -----------------------------------------------------------------------------------


def q_raw(days: int) -> Callable:
    def run(session, room: dict, now: datetime) -> int:
        since = now - timedelta(days=days)
        try:
            from fleet.readings import raw
        except ImportError:  # before readings-by-room: one query per device of the room
            from fleet.registry import readings

            return sum(len(readings(session, d, since=since, limit=LIMIT)) for d in room["devices"])
        return len(raw(session, room["devices"], since=since, limit=LIMIT))

    return run


def q_rollup(days: int, resolution: str) -> Callable:
    def run(session, room: dict, now: datetime) -> int:
        from fleet.readings import rolled

        return len(
            rolled(session, room["devices"], resolution, since=now - timedelta(days=days), limit=LIMIT)
        )

    return run


def has_rollups() -> bool:
    try:
        import fleet.readings  # noqa: F401
        from fleet.models import Rollup  # noqa: F401
        from fleet.rollups import RESOLUTIONS  # noqa: F401
    except ImportError:
        return False
    return hasattr(fleet.readings, "rolled")


QUERIES: dict[str, tuple[Callable[[], bool], Callable]] = {
    "raw_24h": (lambda: True, q_raw(1)),
    "raw_30d": (lambda: True, q_raw(30)),
    "rollup_24h_15m": (has_rollups, q_rollup(1, "15m")),
    "rollup_30d_1h": (has_rollups, q_rollup(30, "1h")),
}


# --- data ------------------------------------------------------------------------------------------


def setup_registry(url: str, devices: int, per_room: int) -> list[dict]:
    """Migrate, register the devices (fleet.registry.register_device) and return the rooms."""
    from sqlmodel import Session

    from fleet.db import make_engine, upgrade
    from fleet.registry import register_device

    engine = make_engine(url)
    upgrade(engine)
    rooms: dict[str, list[str]] = {}
    with Session(engine) as session:
        for i in range(devices):
            did, room = f"q-{i:05d}", f"room-{i // per_room:04d}"
            register_device(session, did, "bench", room)
            rooms.setdefault(room, []).append(did)
    engine.dispose()
    return [{"name": k, "devices": v} for k, v in rooms.items()]


def readings_rows(ids: list[str], rows: int, days: float, now: datetime):
    """(device_id, seq, name, unit, value, ts, received_at) in time order, `rows` of them."""
    per_series = max(1, rows // (len(ids) * len(METRICS)))
    step = days * 86400 / per_series
    start = now - timedelta(days=days)
    made = 0
    for k in range(per_series):
        ts = start + timedelta(seconds=k * step)
        day = (k * step % 86400) / 86400
        for j, did in enumerate(ids):
            for name, unit, base in METRICS:
                yield (
                    did,
                    k,
                    name,
                    unit,
                    round(base + 3 * day + (j % 7) * 0.1, 2),
                    ts,
                    ts + timedelta(seconds=1),
                )
                made += 1
                if made >= rows:
                    return


def fill_sqlite(url: str, rows_iter, chunk: int = 200_000) -> None:
    from fleet.db import make_engine

    engine = make_engine(url)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("PRAGMA synchronous=OFF")  # bulk load only; the fleet's own pragmas are used to query
        cur.execute("BEGIN")
        sql = (
            "INSERT INTO reading (device_id, seq, name, unit, value, ts, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        fmt = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's SQLite DATETIME storage format
        batch = []
        for r in rows_iter:
            batch.append((r[0], r[1], r[2], r[3], r[4], r[5].strftime(fmt), r[6].strftime(fmt)))
            if len(batch) >= chunk:
                cur.executemany(sql, batch)
                batch = []
        if batch:
            cur.executemany(sql, batch)
        cur.execute("COMMIT")
        cur.execute("ANALYZE")
    finally:
        raw.close()
        engine.dispose()


def fill_postgres(url: str, rows_iter) -> None:
    from fleet.db import make_engine

    engine = make_engine(url)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        with cur.copy("COPY reading (device_id, seq, name, unit, value, ts, received_at) FROM STDIN") as cp:
            for r in rows_iter:
                cp.write_row(r)
        raw.commit()
        raw.driver_connection.autocommit = True
        raw.driver_connection.execute("VACUUM ANALYZE reading")
    finally:
        raw.close()
        engine.dispose()


ROLLUP_COLUMNS = "device_id, name, resolution, bucket, count, sum, min, max, last, last_ts"


def fill_rollups(url: str, kind: str) -> dict:
    """What ingest's incremental upserts leave, in one INSERT … SELECT per resolution."""
    from sqlalchemy import text

    from fleet.db import make_engine
    from fleet.rollups import RESOLUTIONS

    engine = make_engine(url)
    out = {}
    with engine.begin() as c:
        for res, sec in RESOLUTIONS.items():
            t0 = time.monotonic()
            if kind == "sqlite":
                c.execute(
                    text(f"""
                    INSERT INTO rollup ({ROLLUP_COLUMNS})
                    SELECT device_id, name, '{res}', datetime(b, 'unixepoch') || '.000000',
                           count(*), sum(value), min(value), max(value), value, max(ts)
                    FROM (SELECT device_id, name, value, ts,
                                 CAST(strftime('%s', ts) AS INTEGER) / {sec} * {sec} AS b FROM reading)
                    GROUP BY device_id, name, b""")
                )
            else:
                c.execute(
                    text(f"""
                    INSERT INTO rollup ({ROLLUP_COLUMNS})
                    SELECT device_id, name, '{res}', to_timestamp(b),
                           count(*), sum(value), min(value), max(value),
                           (array_agg(value ORDER BY ts DESC))[1], max(ts)
                    FROM (SELECT device_id, name, value, ts,
                                 floor(extract(epoch FROM ts) / {sec})::bigint * {sec} AS b FROM reading) r
                    GROUP BY device_id, name, b""")
                )
            out[res] = round(time.monotonic() - t0, 1)
    with engine.connect() as c:
        out["rows"] = c.execute(text("SELECT count(*) FROM rollup")).scalar_one()
        if kind == "sqlite":
            c.execute(text("ANALYZE"))
        else:
            c.commit()
    if kind == "postgres":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text("VACUUM ANALYZE rollup"))
    engine.dispose()
    return out


# --- measuring -------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))]


def measure(
    url: str,
    rooms: list[dict],
    now: datetime,
    samples: int,
    warmup: int = 3,
    budget: float = 60,
    min_samples: int = 30,
) -> dict:
    from sqlmodel import Session

    from fleet.db import make_engine

    engine = make_engine(url)
    rng = random.Random(1)
    out = {}
    try:
        for name, (available, fn) in QUERIES.items():
            if not available():
                out[name] = {"skipped": "not in the code measured"}
                continue
            times, sizes = [], []
            started = time.monotonic()
            for i in range(warmup + samples):
                if i >= warmup + min_samples and time.monotonic() - started > budget:
                    break  # slow query: fewer samples (at least min_samples), the count is reported
                room = rng.choice(rooms)
                with Session(engine) as s:
                    t0 = time.perf_counter()
                    n = fn(s, room, now)
                    dt = time.perf_counter() - t0
                if i >= warmup:
                    times.append(dt * 1000)
                    sizes.append(n)
            out[name] = {
                "p50_ms": round(pct(times, 50), 2),
                "p99_ms": round(pct(times, 99), 2),
                "max_ms": round(max(times), 2),
                "rows_p50": int(pct(sizes, 50)),
                "samples": len(times),
            }
            log(
                f"  {name}: p50 {out[name]['p50_ms']} ms, p99 {out[name]['p99_ms']} ms, "
                f"{out[name]['rows_p50']} rows"
            )
    finally:
        engine.dispose()
    return out


def one_db(kind: str, a, workdir: Path) -> dict:
    with fresh_database(kind, workdir) as url:
        t0 = time.monotonic()
        rooms = setup_registry(url, a.devices, a.per_room)
        ids = [d for r in rooms for d in r["devices"]]
        now = datetime.now(UTC).replace(microsecond=0)
        t1 = time.monotonic()
        rows = readings_rows(ids, a.rows, a.days, now)
        (fill_sqlite if kind == "sqlite" else fill_postgres)(url, rows)
        load_s = time.monotonic() - t1
        log(f"  {kind}: {a.rows} readings loaded in {load_s:.0f} s ({a.rows / load_s:.0f} rows/s)")
        rollups = fill_rollups(url, kind) if has_rollups() else None
        if rollups:
            log(f"  {kind}: rollups {rollups}")
        size = None
        if kind == "sqlite":
            size = sum(p.stat().st_size for p in workdir.glob("bench-*.db*"))
        res = measure(url, rooms, now, a.samples, budget=a.budget, min_samples=min(30, a.samples))
        return {
            "queries": res,
            "load_s": round(load_s, 1),
            "setup_s": round(t1 - t0, 1),
            "rollups": rollups,
            "db_bytes": size,
            "rooms": len(rooms),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--devices", type=int, default=500)
    p.add_argument("--per-room", type=int, default=5)
    p.add_argument("--days", type=float, default=35)
    p.add_argument("--samples", type=int, default=200, help="timed queries per kind (at most)")
    p.add_argument("--budget", type=float, default=60, help="seconds per kind; slow ones stop at 30 samples")
    p.add_argument("--db", choices=["sqlite", "postgres", "both"], default="sqlite")
    p.add_argument(
        "--workdir", type=Path, default=None, help="where the SQLite file goes (default: a temp dir)"
    )
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.rows, a.devices, a.samples = 20_000, 20, 10
    kinds = ["sqlite", "postgres"] if a.db == "both" else [a.db]
    skipped = []
    if "postgres" in kinds and not postgres_available():
        kinds.remove("postgres")
        skipped.append("postgres (not reachable)")
    results = {}
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix="maille-bench-query-", dir=a.workdir) as tmp:
            results[kind] = one_db(kind, a, Path(tmp))
    summary = {
        "rows": a.rows,
        "devices": a.devices,
        "per_room": a.per_room,
        "cores": machine()["cores"],
        "results": {
            k: {
                q: {m: v.get(m) for m in ("p50_ms", "p99_ms", "skipped") if m in v}
                for q, v in r["queries"].items()
            }
            for k, r in results.items()
        },
    }
    if skipped:
        summary["skipped"] = skipped
    finish(
        "query", summary, {"machine": machine(), "source": source(), "options": vars(a), "results": results}
    )


if __name__ == "__main__":
    main()
