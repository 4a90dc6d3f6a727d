"""Issue 3 acceptance for ingest: exactly once through a SIGKILL under load (a), two workers on a
shared subscription (b), and a running ingest fed garbage (c). Real Mosquitto, real databases, the
real `maille serve` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlmodel import Session, select

from fleet import contract
from fleet.broker import FLEET_USER, free_port
from fleet.ingest import subscriptions
from fleet.models import Reject
from fleet.registry import register_device
from tests.helpers import wait_until

BT = 1_795_686_126
MAILLE = Path(sys.executable).with_name("maille")


def enroll(engine, broker, device_ids: list[str]) -> dict[str, str]:
    """Register devices in the fleet and on the broker; returns their passwords."""
    passwords = {d: f"pw-{uuid.uuid4().hex}" for d in device_ids}
    for d, pw in passwords.items():
        broker.users.set_user(d, pw)
    broker.reload()
    with Session(engine) as s:
        for d in device_ids:
            register_device(s, d, "load", "1.01")
    return passwords


def publish_stream(broker, device_id: str, password: str, seqs: range) -> None:
    """One device publishing telemetry QoS 1 as fast as the broker takes it (one reading each)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311)
    client.username_pw_set(device_id, password)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    last = None
    for seq in seqs:
        body = json.dumps({"seq": seq, "bt": BT + seq, "e": [{"n": "co2", "u": "ppm", "v": 400 + seq % 100}]})
        last = client.publish(f"maille/v1/{device_id}/telemetry", body, qos=1)
    last.wait_for_publish(60)
    while client._out_messages:  # every PUBACK in, not only the last one's
        time.sleep(0.01)
    client.disconnect()
    client.loop_stop()


def stored_keys(engine) -> list[tuple[str, int]]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(text("SELECT device_id, seq FROM reading"))]


def count(engine, table: str = "reading") -> int:
    with engine.connect() as c:
        return c.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def rolled_up(engine) -> int:
    with engine.connect() as c:
        return c.execute(
            text("SELECT coalesce(sum(count), 0) FROM rollup WHERE resolution = '1d'")
        ).scalar_one()


class ServeProcess:
    """`maille serve` as a child process configured by environment, so it can be SIGKILLed."""

    def __init__(self, db_url: str, broker, client_id: str, log: Path, workers: int = 1):
        self.port = free_port()
        self.env = {
            **os.environ,
            "MAILLE_SETTINGS_FILE": str(log.with_suffix(".toml")),  # none: defaults and these variables
            "MAILLE_DATABASE_URL": db_url,
            "MAILLE_MQTT_URL": broker.fleet_url,
            "MAILLE_API_PORT": str(self.port),
            "MAILLE_INGEST_CLIENT_ID": client_id,
            "MAILLE_INGEST_WORKERS": str(workers),
        }
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServeProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(MAILLE), "serve"], env=self.env, stdout=out, stderr=out)

        def healthy() -> bool:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 20, what="maille serve to answer")
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)


def _sigkill_under_load(engine, db_url, broker, tmp_path, total: int) -> dict:
    devices = [f"load-{uuid.uuid4().hex[:6]}-{i}" for i in range(4)]
    passwords = enroll(engine, broker, devices)
    serve = ServeProcess(db_url, broker, f"maille-ingest-{uuid.uuid4().hex[:8]}", tmp_path / "serve.log")
    serve.start()
    try:
        # The first message proves the persistent session exists before the load starts.
        publish_stream(broker, devices[0], passwords[devices[0]], range(0, 1))
        wait_until(lambda: count(engine) == 1, 15, what="first reading")
        per_device = total // len(devices)
        ranges = {d: range(1 if i == 0 else 0, per_device) for i, d in enumerate(devices)}
        publishers = [
            threading.Thread(target=publish_stream, args=(broker, d, passwords[d], ranges[d]))
            for d in devices
        ]
        started = time.monotonic()
        for t in publishers:
            t.start()
        wait_until(lambda: count(engine) >= total // 4, 60, interval=0.01, what="a quarter stored")
        at_kill = count(engine)
        serve.kill()
        for t in publishers:
            t.join(120)
        published_at = time.monotonic()
        serve.start()
        wait_until(lambda: count(engine) >= total, 120, interval=0.1, what=f"all {total} stored")
        done = time.monotonic()
        time.sleep(0.5)  # anything doubled or late would show now
        expected = {(d, s) for d in devices for s in range(per_device)}
        keys = stored_keys(engine)
        assert len(keys) == len(set(keys)) == total and set(keys) == expected
        assert rolled_up(engine) == total  # each reading in its rollups exactly once too
        return {"at_kill": at_kill, "publish_s": published_at - started, "total_s": done - started}
    finally:
        serve.stop()


def test_sigkill_mid_stream_loses_and_doubles_nothing(engine, db_url, broker, tmp_path):
    """(a) SIGKILL `maille serve` while 4 devices stream 4,000 messages; restart: exactly the set."""
    facts = _sigkill_under_load(engine, db_url, broker, tmp_path, 4_000)
    assert 0 < facts["at_kill"] < 4_000
    print(f"\nsigkill: {facts}")


@pytest.mark.long
def test_sigkill_mid_stream_20k(engine, db_url, broker, tmp_path):
    facts = _sigkill_under_load(engine, db_url, broker, tmp_path, 20_000)
    print(f"\nsigkill 20k: {facts}")


def test_two_workers_on_a_shared_subscription_store_a_stream_once(engine, broker, ingest_factory):
    """(b) Two workers share `$share/<group>/…`: both get a share, together every message once."""
    group = f"test-{uuid.uuid4().hex[:8]}"  # a group of its own: old sessions of other tests get nothing
    # Both take only the shared channels (worker 0 of `maille serve` also takes `state`, not shared).
    workers = [ingest_factory(topics=subscriptions(1, 2, group)) for _ in range(2)]
    devices = [f"shared-{uuid.uuid4().hex[:6]}-{i}" for i in range(4)]
    passwords = enroll(engine, broker, devices)
    total = 2_000
    threads = [
        threading.Thread(target=publish_stream, args=(broker, d, passwords[d], range(total // 4)))
        for d in devices
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wait_until(lambda: count(engine) == total, 30, what="all stored")
    time.sleep(0.3)
    shares = [w.stats.stored_messages for w in workers]
    assert all(share > total // 10 for share in shares), shares
    assert sum(w.stats.received for w in workers) == total  # no message delivered to both
    assert sum(w.stats.stored_readings for w in workers) == total == count(engine) == rolled_up(engine)
    assert sorted(stored_keys(engine)) == sorted((d, s) for d in devices for s in range(total // 4))


# --- (c) garbage at a running ingest -----------------------------------------------------------

REGISTERED = "prop-dev-1"
device_ids = st.sampled_from([REGISTERED, "ghost-dev", "Bad_Id", "x", "a" * 40, "dev%20"])
channels = st.sampled_from(["telemetry", "state", "health", "ack"])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)
fixtures = [
    json.loads(p.read_text()) for p in (Path(__file__).parents[1] / "fixtures" / "contract").glob("*.json")
]
mutated = st.builds(
    lambda base, key, value: {**base, key: value},
    st.sampled_from(fixtures),
    st.sampled_from(["seq", "bt", "e", "state", "uptime", "heap_free", "id", "ok", "faults", "zz"]),
    json_values,
)
payloads = st.one_of(
    mutated.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.integers(4097, 9000).map(lambda n: b'{"seq": 1, "bt": 1, "e": [], "x": "' + b"a" * n + b'"}'),
    st.sampled_from([b"", b"{", b'{"seq": NaN}', b"\xff\xfe\x00", b"[]", b"null"]),
)


@pytest.fixture
def garbage_target(engine, fresh_broker, ingest_factory):
    """A running ingest on a broker of its own (so every message it counts is one the test sent)."""
    broker = fresh_broker
    enroll(engine, broker, [REGISTERED])
    running = ingest_factory(mqtt_url=broker.fleet_url, batch_interval=0.005)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.username_pw_set(FLEET_USER, broker.fleet_password)
    client.connect(broker.host, broker.port)
    client.loop_start()
    yield running, client
    client.disconnect()
    client.loop_stop()


@settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(device=device_ids, channel=channels, payload=payloads)
def test_running_ingest_counts_every_bad_message_as_a_reject_with_its_reason(
    engine, garbage_target, device, channel, payload
):
    """(c) Whatever arrives, ingest keeps running and each message is either stored or rejected and
    counted under the reason the contract gives."""
    running, client = garbage_target
    topic = f"maille/v1/{device}/{channel}"
    decoded = contract.parse(topic, payload)
    if isinstance(decoded, contract.Reject):
        expected = str(decoded.reason)
    else:
        expected = None if device == REGISTERED else "unknown_device"
    before = (running.stats.received, dict(running.stats.rejected), running.stats.stored_messages)
    client.publish(topic, payload, qos=1).wait_for_publish(5)
    wait_until(lambda: running.stats.received == before[0] + 1, 5, interval=0.002, what="received")
    wait_until(
        lambda: (
            sum(running.stats.rejected.values()) + running.stats.stored_messages
            == sum(before[1].values()) + before[2] + 1
        ),
        5,
        interval=0.002,
        what="stored or rejected",
    )
    after = running.stats.rejected
    if expected is None:
        assert running.stats.stored_messages == before[2] + 1 and after == before[1]
    else:
        assert after[expected] == before[1][expected] + 1, (topic, payload[:80], after)
        with Session(engine) as s:
            last = s.exec(select(Reject).order_by(Reject.id.desc())).first()
        assert (last.reason, last.topic) == (expected, topic)
    assert running.ingest.subscribed.is_set()
