"""Where ingest's CPU goes, stage by stage, without MQTT: cost per message of
  parse      fleet.contract.parse (what ingest runs on every message),
  store      fleet.ingest.store_batch in batches of 500 on a fresh database (one commit per batch),
  store_raw  a prototype of the next step: the same rows through one prepared INSERT … ON CONFLICT DO
             NOTHING with the DB-API's executemany (SQLite) and one UPDATE per device of the batch,
and a JSON line with µs per message and the implied ceiling (messages/s on one core).
Not part of `make bench` (no ratio: it tells where time goes, run.py measures).

Usage: stages.py [--messages 20000] [--devices 100] [--db sqlite|postgres]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import fresh_database, log, source  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    a = p.parse_args()

    from sqlmodel import Session

    from fleet import contract
    from fleet.db import make_engine
    from fleet.ingest import Received, store_batch
    from fleet.sim import device_ids, register_devices, telemetry_payloads

    ids = device_ids(a.devices, "st")
    per = a.messages // a.devices
    payloads = telemetry_payloads(per)
    msgs = [(contract.topic_of(d, "telemetry"), pl) for i in range(per) for d in ids for pl in (payloads[i],)]
    out: dict = {
        "messages": len(msgs),
        "devices": a.devices,
        "batch": a.batch,
        "db": a.db,
        "source": source(),
    }

    t0 = time.perf_counter()
    parsed = [contract.parse(t, pl) for t, pl in msgs]
    out["parse_us"] = round((time.perf_counter() - t0) / len(msgs) * 1e6, 1)
    now = datetime.now(UTC)
    received = [Received(t, pl, now, m) for (t, pl), m in zip(msgs, parsed, strict=True)]

    with tempfile.TemporaryDirectory() as tmp:
        for stage in ("store", "store_raw"):
            with fresh_database(a.db, Path(tmp)) as url:
                register_devices(url, ids, site="stages")
                engine = make_engine(url)
                t0 = time.perf_counter()
                for i in range(0, len(received), a.batch):
                    batch = received[i : i + a.batch]
                    if stage == "store":
                        with Session(engine) as s:
                            store_batch(s, batch)
                    else:
                        store_raw(engine, batch)
                out[f"{stage}_us"] = round((time.perf_counter() - t0) / len(received) * 1e6, 1)
                engine.dispose()
    for k in ("parse", "store", "store_raw"):
        out[f"{k}_ceiling_per_s"] = round(1e6 / out[f"{k}_us"])
    log(json.dumps(out))
    print(json.dumps(out))


def store_raw(engine, batch) -> int:
    """The prototype: prepared statements and executemany, no ORM, no per-batch SQL compilation."""
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    sqlite = engine.dialect.name == "sqlite"
    rows, marks = [], {}
    for r in batch:
        m = r.msg
        at = r.at.strftime(fmt) if sqlite else r.at
        for rec in m.e:
            ts = m.time_of(rec)
            rows.append((m.device_id, m.seq, rec.n, rec.u, rec.v, ts.strftime(fmt) if sqlite else ts, at))
        marks[m.device_id] = max(marks.get(m.device_id, -1), m.seq)
    ph = "?" if sqlite else "%s"
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.executemany(
            "INSERT INTO reading (device_id, seq, name, unit, value, ts, received_at) "
            f"VALUES ({', '.join([ph] * 7)}) ON CONFLICT (device_id, seq, name) DO NOTHING",
            rows,
        )
        at = batch[-1].at.strftime(fmt) if sqlite else batch[-1].at
        biggest = "max" if sqlite else "greatest"
        cur.executemany(
            f"UPDATE device SET last_seen = {ph}, stored_seq = {biggest}(coalesce(stored_seq, -1), {ph}) "
            f"WHERE id = {ph}",
            [(at, seq, d) for d, seq in sorted(marks.items())],
        )
        raw.commit()
    finally:
        raw.close()
    return len(rows)


if __name__ == "__main__":
    main()
