"""Fleet test parts: a migrated database, registered devices, ingest running in a thread, MQTT nodes."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from sqlmodel import Session

from fleet.auth import Role, create_token
from fleet.broker import FLEET_USER
from fleet.db import make_engine, upgrade
from fleet.ingest import Ingest
from fleet.registry import register_device
from tests.helpers import wait_until


@pytest.fixture
def engine(db_url):
    """A database of the test's own, migrated to head."""
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


def clear_retained(broker, device_id: str) -> None:
    """Remove a device's retained state and watermark, so later tests on the session broker see none."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.username_pw_set(FLEET_USER, broker.fleet_password)
    client.connect(broker.host, broker.port)
    client.loop_start()
    for channel in ("state", "stored"):
        client.publish(f"maille/v1/{device_id}/{channel}", b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def token(engine):
    """Factory: a new API token (the secret) of this role, scoped to these site slugs and metrics if given."""
    made = iter(range(1_000_000))

    def make(role: Role | str = Role.admin, *sites: str, name: str | None = None, metrics=()) -> str:
        with Session(engine) as s:
            return create_token(s, name or f"{role}-{next(made)}", Role(role), sites, metrics=metrics)[1]

    return make


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def device(engine, broker, device_credentials) -> tuple[str, str]:
    """A device registered in the fleet and known to the broker: (device_id, password)."""
    device_id, password = device_credentials()
    with Session(engine) as s:
        register_device(s, device_id, "test-site", "1.01")
    yield device_id, password
    clear_retained(broker, device_id)


class IngestThread:
    """A real `Ingest` on its own event loop in a thread, so tests can block on paho and polling."""

    def __init__(self, ingest: Ingest):
        self.ingest = ingest
        self.stats = ingest.stats
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(ingest.run(self._stop),))

    def start(self) -> IngestThread:
        self._thread.start()
        wait_until(self.ingest.subscribed.is_set, 10, what="ingest subscribed")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "ingest did not stop"
        self._loop.close()


@pytest.fixture
def ingest_factory(engine, broker):
    """Factory: start ingest against the session broker; a fresh client id unless one is given."""
    running: list[IngestThread] = []

    def start(client_id: str | None = None, mqtt_url: str | None = None, **kw) -> IngestThread:
        kw.setdefault("batch_interval", 0.02)
        kw.setdefault("reconnect_interval", 0.1)
        ingest = Ingest(
            engine, mqtt_url or broker.fleet_url, client_id or f"ingest-{uuid.uuid4().hex[:8]}", **kw
        )
        t = IngestThread(ingest).start()
        running.append(t)
        return t

    yield start
    for t in running:
        if t._thread.is_alive():
            t.stop()


class Node:
    """A paho client speaking as a device: persistent session, retained last will `{"state":"offline"}`."""

    def __init__(self, broker, device_id: str, password: str):
        self.device_id = device_id
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, clean_session=False, protocol=mqtt.MQTTv311
        )
        self.client.username_pw_set(device_id, password)
        self.client.will_set(self.topic("state"), json.dumps({"state": "offline"}), qos=1, retain=True)
        self.client.connect(broker.host, broker.port, keepalive=5)
        self.client.loop_start()
        wait_until(self.client.is_connected, 10, what=f"{device_id} connected")

    def topic(self, channel: str) -> str:
        return f"maille/v1/{self.device_id}/{channel}"

    def send(self, channel: str, payload: dict | bytes, retain: bool = False) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(self.topic(channel), body, qos=1, retain=retain).wait_for_publish(5)

    def vanish(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a node losing power: the broker sends the will."""
        self.client.loop_stop()
        self.client.socket().close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def node(broker, device):
    n = Node(broker, *device)
    yield n
    if n.client.is_connected():
        n.close()
