"""Readings at a chosen resolution from rollups kept by ingest, CSV export, rooms, and the live
stream (Server-Sent Events) from a running service."""

from __future__ import annotations

import csv
import io
import json
import threading

import httpx
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from fleet.api import create_app
from fleet.models import Reading
from fleet.registry import register_device
from tests.fleet.conftest import Node, bearer
from tests.fleet.test_api import BT, deliver
from tests.helpers import wait_until


def test_rollups_match_the_raw_readings_and_export_as_csv(engine, token):
    with Session(engine) as s:
        register_device(s, "dev-a", "bliiida", "2.14")
        register_device(s, "dev-b", "bliiida", "2.14")
    for seq in range(120):  # two hours, a reading a minute, two devices; every message twice
        for device, offset in (("dev-a", 0), ("dev-b", 100)):
            body = {"seq": seq, "bt": BT + 60 * seq, "e": [{"n": "co2", "u": "ppm", "v": 400 + offset + seq}]}
            deliver(engine, f"maille/v1/{device}/telemetry", body)
            deliver(engine, f"maille/v1/{device}/telemetry", body)
    client = TestClient(create_app(engine), headers=bearer(token("viewer")))
    url = "/api/v1/devices/dev-a/readings"
    hours = client.get(url, params={"resolution": "1h", "metric": "co2"}).json()
    assert [(h["count"], h["mean"], h["min"], h["max"], h["last"]) for h in hours] == [
        (60, 429.5, 400, 459, 459),
        (60, 489.5, 460, 519, 519),
    ]
    quarter = client.get(
        url, params={"resolution": "15m", "since": "2026-01-01T12:30:00Z", "limit": 2}
    ).json()
    assert [(q["bucket"], q["count"]) for q in quarter] == [
        ("2026-01-01T13:30:00Z", 15),
        ("2026-01-01T13:45:00Z", 15),
    ]
    day = client.get(url, params={"resolution": "1d"}).json()
    with Session(engine) as s:
        raw = [r.value for r in s.exec(select(Reading).where(Reading.device_id == "dev-a"))]
    assert day[0]["count"] == len(raw) == 120 and day[0]["mean"] == sum(raw) / len(raw)

    room_id = client.get("/api/v1/devices/dev-a").json()["room_id"]
    room = client.get(f"/api/v1/rooms/{room_id}/readings", params={"resolution": "1h"}).json()
    assert sorted((r["device"], r["count"]) for r in room) == [("dev-a", 60)] * 2 + [("dev-b", 60)] * 2

    exported = client.get(url, params={"resolution": "1h"}, headers={"Accept": "text/csv"})
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert list(rows[0]) == ["device", "name", "bucket", "count", "mean", "min", "max", "last"]
    assert (rows[0]["count"], rows[1]["last"]) == ("60", "519.0")
    raw_csv = client.get(url, params={"format": "csv", "limit": 3}).text.splitlines()
    assert raw_csv[0] == "device,seq,name,unit,value,ts" and len(raw_csv) == 4


def test_live_stream_sends_new_readings_as_server_sent_events(fleet_service, broker, device, token):
    fleet = fleet_service()
    device_id, password = device
    headers = bearer(token("integrator", "test-site"))
    events: list[dict] = []
    connected = threading.Event()

    def listen() -> None:
        with httpx.stream(
            "GET", f"{fleet.api}/api/v1/stream", params={"device": device_id}, headers=headers, timeout=10
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                connected.set()
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if len(events) == 2:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(5)
    node = Node(broker, device_id, password)
    try:
        node.send(
            "telemetry",
            {"seq": 1, "bt": BT, "e": [{"n": "co2", "u": "ppm", "v": 612}, {"n": "temperature", "v": 21}]},
        )
        wait_until(lambda: len(events) == 2, 5, what="two events")
    finally:
        node.close()
    assert events == [
        {
            "device": device_id,
            "seq": 1,
            "name": "co2",
            "unit": "ppm",
            "value": 612.0,
            "ts": "2026-01-01T12:00:00+00:00",
        },
        {
            "device": device_id,
            "seq": 1,
            "name": "temperature",
            "unit": None,
            "value": 21.0,
            "ts": "2026-01-01T12:00:00+00:00",
        },
    ]
    other_site = httpx.get(f"{fleet.api}/api/v1/stream", params={"site": "elsewhere"}, headers=headers)
    assert other_site.status_code == 404
