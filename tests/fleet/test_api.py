"""The HTTP API over a real database: typed bodies, problem+json errors, Prometheus metrics."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from fleet import contract
from fleet.api import create_app
from fleet.db import make_engine
from fleet.ingest import Ingest, Received, store_batch
from fleet.registry import register_device
from tests.fleet.conftest import bearer

BT = int(datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp())


def deliver(engine, topic: str, payload: dict | bytes) -> None:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with Session(engine) as s:
        store_batch(s, [Received(topic, raw, datetime.now(UTC), contract.parse(topic, raw))])


@pytest.fixture
def fleet(engine):
    """Two devices, one online with readings and health, and one reject."""
    with Session(engine) as s:
        register_device(s, "bliiida-2-14-a", "bliiida", "2.14", board="esp32-s3")
        register_device(s, "bliiida-0-01-b", "bliiida", "0.01")
    deliver(engine, "maille/v1/bliiida-2-14-a/state", {"state": "online", "fw": "0.1.0", "boot": 2})
    for seq in range(10):
        deliver(
            engine,
            "maille/v1/bliiida-2-14-a/telemetry",
            {
                "seq": seq,
                "bt": BT + 60 * seq,
                "e": [
                    {"n": "temperature", "u": "Cel", "v": 20 + seq / 10},
                    {"n": "co2", "u": "ppm", "v": 400 + seq},
                ],
            },
        )
    deliver(engine, "maille/v1/bliiida-2-14-a/health", {"uptime": 600, "heap_free": 50000})
    deliver(engine, "maille/v1/ghost-1/telemetry", b'{"seq": "x"}')
    return engine


@pytest.fixture
def client(fleet, token):
    ingest = Ingest(fleet, "mqtt://fleet:pw@127.0.0.1:1")  # never run: its counters stay at zero
    ingest.stats.received = 12
    return TestClient(create_app(fleet, [ingest]), headers=bearer(token("admin")))


def assert_problem(response, status: int, detail: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["type"] == "about:blank" and body["title"]
    assert detail in body["detail"], body["detail"]


def test_healthz_answers_ok_only_once_ingest_is_subscribed(fleet):
    assert TestClient(create_app(fleet)).get("/healthz").json() == {
        "status": "ok",
        "database": "ok",
        "ingest": "none",  # an API-only process
    }
    ingest = Ingest(fleet, "mqtt://fleet:pw@127.0.0.1:1")  # never run: never subscribed
    client = TestClient(create_app(fleet, [ingest]))
    assert_problem(client.get("/healthz"), 503, "ingest not subscribed to the broker: 1 of 1 workers")
    ingest.subscribed.set()  # what Ingest.run does on its SUBACK
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok", "ingest": "subscribed"}


def test_healthz_without_database():
    engine = make_engine("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    assert_problem(TestClient(create_app(engine)).get("/healthz"), 503, "database unreachable")


def test_devices(client):
    devices = client.get("/api/v1/devices").json()
    assert [d["id"] for d in devices] == ["bliiida-0-01-b", "bliiida-2-14-a"]
    idle, busy = devices
    assert (idle["status"], idle["last_seen"], idle["stored_seq"], idle["site"]) == (
        "provisioned",
        None,
        None,
        "bliiida",
    )
    assert (busy["status"], busy["fw"], busy["board"], busy["room"], busy["stored_seq"], busy["boot"]) == (
        "online",
        "0.1.0",
        "esp32-s3",
        "2.14",
        9,
        2,
    )
    assert busy["last_health"]["heap_free"] == 50000
    assert datetime.fromisoformat(busy["last_seen"]).tzinfo is not None
    assert client.get("/api/v1/devices/bliiida-2-14-a").json() == busy


def test_unknown_device_is_a_404_problem(client):
    assert_problem(client.get("/api/v1/devices/nope"), 404, "no device 'nope'")
    assert_problem(client.get("/api/v1/devices/nope/readings"), 404, "no device 'nope'")


def test_readings_window_metric_and_limit(client):
    url = "/api/v1/devices/bliiida-2-14-a/readings"
    everything = client.get(url).json()
    assert len(everything) == 20 and everything[-1]["ts"] >= everything[0]["ts"]
    temps = client.get(url, params={"metric": "temperature"}).json()
    assert [r["seq"] for r in temps] == list(range(10))
    assert temps[3] == {
        "device": "bliiida-2-14-a",
        "seq": 3,
        "name": "temperature",
        "unit": "Cel",
        "value": 20.3,
        "ts": "2026-01-01T12:03:00Z",
    }
    window = client.get(
        url, params={"metric": "co2", "since": "2026-01-01T13:02:00+01:00", "until": "2026-01-01T12:05:00"}
    ).json()  # no offset: UTC
    assert [r["seq"] for r in window] == [2, 3, 4, 5]
    latest = client.get(url, params={"metric": "co2", "limit": 3}).json()
    assert [r["seq"] for r in latest] == [7, 8, 9]  # the newest three, newest last


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"since": "yesterday"}, "query.since: Input should be a valid datetime"),
        ({"limit": 0}, "query.limit: Input should be greater than or equal to 1"),
        ({"limit": 10001}, "query.limit: Input should be less than or equal to 10000"),
        ({"metric": "Bad Name"}, "query.metric: String should match pattern"),
        (
            {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
            "since: must not be after until",
        ),
    ],
)
def test_bad_query_is_a_422_problem(client, params, detail):
    assert_problem(client.get("/api/v1/devices/bliiida-2-14-a/readings", params=params), 422, detail)


def test_rejects(client):
    [reject] = client.get("/api/v1/rejects").json()
    assert reject["reason"] == "invalid" and reject["topic"] == "maille/v1/ghost-1/telemetry"
    assert reject["payload"] == '{"seq": "x"}' and "telemetry.seq" in reject["detail"]
    assert_problem(client.get("/api/v1/rejects", params={"limit": -1}), 422, "query.limit")


def test_metrics(client):
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = set(response.text.splitlines())
    assert {
        "maille_ingest_received_total 12",
        "maille_ingest_stored_readings_total 0",
        'maille_ingest_rejected_total{reason="invalid"} 0',
        'maille_devices{status="online"} 1',
        'maille_devices{status="provisioned"} 1',
        'maille_devices{status="offline"} 0',
        "maille_devices_online 1",
        "maille_alerts_open 0",
        'maille_ingest_lag_seconds{worker="0"} 0',
        "# TYPE maille_ingest_received_total counter",
        "# TYPE maille_devices gauge",
    } <= lines


def test_metrics_count_every_refused_request_by_route_and_status(client):
    client.get("/api/v1/devices/nobody")
    client.get("/api/v1/devices/nobody")
    client.get("/api/v1/rejects", params={"limit": -1})
    client.get("/api/v1/devices", headers={"Authorization": "Bearer mt_wrong"})
    client.get("/no/such/page")
    lines = set(client.get("/metrics").text.splitlines())
    assert {
        "# TYPE maille_http_refused_total counter",
        'maille_http_refused_total{route="/api/v1/devices/{device_id}",status="404"} 2',
        'maille_http_refused_total{route="/api/v1/rejects",status="422"} 1',
        'maille_http_refused_total{route="/api/v1/devices",status="401"} 1',
        'maille_http_refused_total{route="unmatched",status="404"} 1',
    } <= lines


def test_metrics_without_ingest_show_devices_only(fleet):
    text = TestClient(create_app(fleet)).get("/metrics").text  # public: no token
    assert "maille_devices{" in text and "maille_ingest" not in text


def test_openapi_documents_typed_routes(client):
    spec = client.get("/openapi.json").json()
    assert {
        "/healthz",
        "/api/v1/devices",
        "/api/v1/devices/{device_id}",
        "/api/v1/devices/{device_id}/readings",
        "/api/v1/rejects",
        "/metrics",
    } <= set(spec["paths"])
    assert {"DeviceOut", "ReadingOut", "BucketOut", "RejectOut", "Problem"} <= set(
        spec["components"]["schemas"]
    )
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200
