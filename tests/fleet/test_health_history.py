"""Health history (issue 8): health messages kept through the real ingest path, once each whatever
the redeliveries, pruned by age on the alert evaluator's pass, and served by the device API."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from fleet import contract
from fleet.alerts import AlertRules, Evaluator, Notifier
from fleet.api import create_app
from fleet.ingest import Received, store_batch
from fleet.models import Device, HealthReport
from fleet.registry import register_device
from tests.fleet.conftest import bearer

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def vitals(uptime: int, boot: int = 3, **extra) -> dict:
    return {"uptime": uptime, "heap_free": 60000 - uptime, "heap_min": 50000, "rssi": -61, "boot": boot,
            "reset": "power_on", "loop_lag_ms": 4, "outbox": 0, "faults": [], **extra}  # fmt: skip


def deliver(engine, device_id: str, *messages: tuple[datetime, dict]) -> None:
    """One batch through ingest's store_batch, each health message received at its own time."""
    batch = []
    for at, payload in messages:
        topic, raw = f"maille/v1/{device_id}/health", json.dumps(payload).encode()
        batch.append(Received(topic, raw, at, contract.parse(topic, raw)))
    with Session(engine) as s:
        store_batch(s, batch)


def stored(engine, device_id: str) -> list[tuple]:
    with Session(engine) as s:
        rows = s.exec(
            select(HealthReport).where(HealthReport.device_id == device_id).order_by(HealthReport.at)
        )
        return [(r.at, r.boot, r.uptime, r.heap_free, r.faults) for r in rows]


@pytest.fixture
def nodes(engine):
    with Session(engine) as s:
        register_device(s, "north-1", "north", "1.01")
        register_device(s, "south-1", "south", "0.01")
    return engine


def test_health_is_kept_once_per_boot_and_uptime_with_the_fleet_receive_time(nodes):
    first = [(T0 + timedelta(minutes=i), vitals(60 * i)) for i in range(3)]
    deliver(nodes, "north-1", *first)
    # Redelivered (a batch whose ack was lost), twice in one batch, and next to new ones: each lands once.
    again = (T0 + timedelta(minutes=9), vitals(60))
    rebooted = (T0 + timedelta(minutes=10), vitals(60, boot=4, faults=["co2: scd4x: no answer at 0x62"]))
    deliver(nodes, "north-1", again, again, rebooted)

    rows = stored(nodes, "north-1")
    assert [(r[1], r[2]) for r in rows] == [(3, 0), (3, 60), (3, 120), (4, 60)]
    assert rows[1][0] == T0 + timedelta(minutes=1)  # the first receive time, not the redelivery's
    assert rows[-1][3:] == (59940, ["co2: scd4x: no answer at 0x62"])
    with Session(nodes) as s:  # the last report is still applied as before
        assert s.get(Device, "north-1").last_health["boot"] == 4


def test_health_without_a_boot_counter_has_no_key_and_is_kept_each_time(nodes):
    bare = {"uptime": 5, "heap_free": None}  # the schema's minimum: nothing to tell a repeat by
    deliver(nodes, "north-1", (T0, bare), (T0, bare))
    assert [(r[1], r[2], r[3]) for r in stored(nodes, "north-1")] == [(None, 5, None), (None, 5, None)]


def test_retention_on_the_evaluator_pass_deletes_old_rows_only(nodes):
    now = T0 + timedelta(days=30, hours=1)
    deliver(nodes, "north-1", (T0, vitals(0)), (now - timedelta(days=29), vitals(60)))
    deliver(nodes, "south-1", (T0 + timedelta(minutes=30), vitals(0)), (now, vitals(60)))
    Evaluator(
        nodes, AlertRules(), Notifier([]), clock=lambda: now, health_retention=timedelta(days=30)
    ).tick()
    assert [r[0] for r in stored(nodes, "north-1")] == [now - timedelta(days=29)]
    assert [r[0] for r in stored(nodes, "south-1")] == [now]


def test_health_api_json_csv_window_and_site_scope(nodes, token):
    deliver(nodes, "north-1", *[(T0 + timedelta(minutes=i), vitals(60 * i)) for i in range(5)])
    app = create_app(nodes)
    north = TestClient(app, headers=bearer(token("integrator", "north")))
    base = "/api/v1/devices/north-1/health"

    body = north.get(base, params={"since": "2026-11-26T09:01:00Z", "limit": 3}).json()
    assert [h["uptime"] for h in body] == [120, 180, 240]  # the latest 3 in the window, oldest first
    assert body[0] | {"at": None} == {
        "device_id": "north-1", "at": None, "uptime": 120, "heap_free": 59880, "heap_min": 50000,
        "rssi": -61, "reconnects": None, "outbox": 0, "outbox_flash": None, "outbox_dropped": None,
        "loop_lag_ms": 4, "boot": 3, "reset": "power_on", "mode": None, "faults": [],
    }  # fmt: skip
    assert datetime.fromisoformat(body[0]["at"]) == T0 + timedelta(minutes=2)
    until = north.get(base, params={"until": "2026-11-26T09:01:00Z"}).json()
    assert [h["uptime"] for h in until] == [0, 60]

    r = north.get(base, params={"format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["uptime"] for row in table] == ["0", "60", "120", "180", "240"]
    assert table[0]["heap_free"] == "60000" and table[0]["boot"] == "3"

    south = TestClient(app, headers=bearer(token("integrator", "south")))
    refused = south.get(base)
    assert refused.status_code == 403 and "not allowed on this site" in refused.json()["detail"]
    assert refused.headers["content-type"] == "application/problem+json"
    backwards = north.get(base, params={"since": "2026-11-26T10:00:00Z", "until": "2026-11-26T09:00:00Z"})
    assert backwards.status_code == 422 and "must not be after until" in backwards.json()["detail"]
    assert north.get("/api/v1/devices/nope/health").status_code == 404
