"""Alerts over the running service with a clock the test moves (issue 3, acceptance (e)): a stale
channel and an offline device each open an alert that resolves when data returns, and a webhook (a
real local HTTP server, failing its first call) receives every event."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from sqlmodel import Session

from fleet.alerts import AlertRules, Threshold, evaluate
from fleet.broker import free_port
from fleet.models import Device
from fleet.registry import register_device
from fleet.service import serve
from fleet.settings import Settings
from tests.fleet.conftest import Node, bearer
from tests.fleet.test_api import deliver
from tests.helpers import wait_until


class Clock:
    """The fleet's time, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Webhook:
    """A local HTTP endpoint that records the JSON it is sent; it answers 503 to the first call."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.calls = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.calls += 1
                if hook.calls == 1:
                    self.send_response(503)
                else:
                    hook.events.append(body)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def seen(self, event: str, rule: str, subject: str = "") -> bool:
        return any(
            e["event"] == event and e["alert"]["rule"] == rule and e["alert"]["subject"] == subject
            for e in self.events
        )

    def close(self) -> None:
        self.server.shutdown()


class ClockedService:
    """The real `serve()` in a thread, on the test's clock."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.loop = asyncio.new_event_loop()
        self.stop_event = asyncio.Event()
        ready = threading.Event()

        async def main() -> None:
            started = asyncio.Event()
            task = asyncio.create_task(serve(settings, self.stop_event, started, clock=clock))
            await started.wait()
            ready.set()
            await task

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self.thread.start()
        assert ready.wait(20), "service not ready"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(20)


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


def test_stale_channel_and_offline_device_open_and_resolve_with_webhooks(
    engine, db_url, broker, device_credentials, webhook, token
):
    clock = Clock()
    settings = Settings(
        database_url=db_url,
        mqtt_url=broker.fleet_url,
        api_port=free_port(),
        ingest_client_id=f"ingest-{uuid.uuid4().hex[:8]}",
        ingest_batch_interval=0.01,
        alert_interval_s=0.05,
        webhooks=[webhook.url],
        webhook_backoff_s=0.05,
        alerts=AlertRules(offline_after_s=120, stale_factor=3, stale_min_s=30, thresholds=[]),
    )
    device_id, password = device_credentials()
    with Session(engine) as s:
        register_device(s, device_id, "test-site", "1.01")
    service = ClockedService(settings, clock)
    http = httpx.Client(base_url=f"http://127.0.0.1:{settings.api_port}", headers=bearer(token("viewer")))
    node = Node(broker, device_id, password)
    seq = iter(range(1000))

    def sample(*names: str) -> None:
        """Ten seconds on, one telemetry message with these channels, stored."""
        clock.advance(10)
        n = next(seq)
        bt = int(clock.now.timestamp())
        node.send("telemetry", {"seq": n, "bt": bt, "e": [{"n": name, "v": 1.0} for name in names]})
        wait_until(lambda: engine_device(engine, device_id).stored_seq == n, 5, what=f"seq {n}")

    try:
        node.send("state", {"state": "online", "fw": "0.1.0"}, retain=True)
        wait_until(lambda: engine_device(engine, device_id).status == "online", 5, what="online")
        for _ in range(5):
            sample("co2", "temperature")
        channels = {c["name"]: c for c in http.get(f"/api/v1/devices/{device_id}/channels").json()}
        assert channels["co2"]["interval_s"] == pytest.approx(10)

        for _ in range(4):  # co2 stops, temperature goes on: 40 s > 3 × 10 s
            sample("temperature")
        wait_until(
            lambda: webhook.seen("opened", "channel_stale", "co2"), 5, what="stale alert on the webhook"
        )
        [stale] = http.get("/api/v1/alerts").json()
        assert (stale["rule"], stale["device_id"], stale["subject"]) == ("channel_stale", device_id, "co2")
        sample("co2", "temperature")
        wait_until(lambda: webhook.seen("resolved", "channel_stale", "co2"), 5, what="stale resolved")

        node.vanish()  # the broker publishes the last will
        wait_until(lambda: engine_device(engine, device_id).status == "offline", 10, what="offline")
        clock.advance(60)
        assert not webhook.seen("opened", "device_offline")  # not yet: 60 s < 120 s
        clock.advance(61)
        wait_until(lambda: webhook.seen("opened", "device_offline"), 5, what="offline alert")
        assert not webhook.seen("opened", "channel_stale", "temperature")  # an offline node is not stale

        node = Node(broker, device_id, password)
        node.send("state", {"state": "online", "fw": "0.1.0"}, retain=True)
        wait_until(lambda: webhook.seen("resolved", "device_offline"), 5, what="offline resolved")
        assert http.get("/api/v1/alerts").json() == []
        history = http.get("/api/v1/alerts", params={"open": False}).json()
        assert sorted((a["rule"], a["resolved_at"] is not None) for a in history) == [
            ("channel_stale", True),
            ("device_offline", True),
        ]
        assert webhook.calls == len(webhook.events) + 1  # the first call failed and was retried
        assert [e["event"] for e in webhook.events] == ["opened", "resolved", "opened", "resolved"]
    finally:
        node.close()
        service.stop()
        node.client.publish(node.topic("state"), b"", qos=1, retain=True)


def engine_device(engine, device_id: str) -> Device:
    with Session(engine) as s:
        return s.get(Device, device_id)


def at(minute: float) -> datetime:
    return datetime(2026, 1, 1, 12, 0, tzinfo=UTC) + timedelta(minutes=minute)


def test_rules_threshold_fault_heap_reboot_loop_and_sleep(engine):
    """The other rules, tick by tick on a database fed through ingest's own store function."""
    with Session(engine) as s:
        register_device(s, "dev-1", "site", "1.01")
        register_device(s, "dev-2", "site", "1.02")
    rules = AlertRules(thresholds=[Threshold(metric="co2", above=1500, for_s=600)], low_heap_bytes=20000)

    def tick(minute: float) -> set[tuple[str, str, str]]:
        with Session(engine) as s:
            return {(e.event, e.alert["rule"], e.alert["device_id"]) for e in evaluate(s, at(minute), rules)}

    deliver(engine, "maille/v1/dev-1/state", {"state": "online", "boot": 1})
    for minute in range(12):  # co2 above 1500 from minute 0 to 11
        bt = int(at(minute).timestamp())
        deliver(
            engine, "maille/v1/dev-1/telemetry", {"seq": minute, "bt": bt, "e": [{"n": "co2", "v": 1600}]}
        )
    assert ("opened", "threshold", "dev-1") in tick(11)
    deliver(
        engine,
        "maille/v1/dev-1/telemetry",
        {"seq": 12, "bt": int(at(12).timestamp()), "e": [{"n": "co2", "v": 900}]},
    )
    assert ("resolved", "threshold", "dev-1") in tick(12.5)

    deliver(
        engine, "maille/v1/dev-1/health", {"uptime": 5, "heap_free": 12000, "faults": ["scd41: no answer"]}
    )
    assert {("opened", "sensor_fault", "dev-1"), ("opened", "low_heap", "dev-1")} <= tick(13)
    deliver(engine, "maille/v1/dev-1/health", {"uptime": 65, "heap_free": 40000, "faults": []})
    assert {("resolved", "sensor_fault", "dev-1"), ("resolved", "low_heap", "dev-1")} <= tick(14)

    for boot in range(2, 7):  # five reboots within the window
        deliver(engine, "maille/v1/dev-1/state", {"state": "online", "boot": boot})
    assert ("opened", "reboot_loop", "dev-1") in tick(15)

    # dev-2 sleeps 15 minutes between connections: asleep, not offline, until it is overdue.
    deliver(engine, "maille/v1/dev-2/state", {"state": "online", "sleep": 900})
    deliver(engine, "maille/v1/dev-2/state", {"state": "offline"})
    assert engine_device(engine, "dev-2").status == "asleep"
    with Session(engine) as s:
        left = s.get(Device, "dev-2").last_state_at
    later = (left + timedelta(seconds=900 + 300 - 1) - at(0)).total_seconds() / 60
    assert not any(rule == "device_offline" for _, rule, _ in tick(later))
    assert (
        engine_device(engine, "dev-2").status == "offline"
    )  # overdue now, offline from the end of its sleep
    assert ("opened", "device_offline", "dev-2") in tick(later + 1 / 30)
