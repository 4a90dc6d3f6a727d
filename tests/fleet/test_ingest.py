"""Ingest over the private Mosquitto and a real database: each reading once, rejects counted, presence
tracked, the watermark published, nothing lost while ingest or the broker is away."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import Session, col, func, select

from fleet import contract, ingest, rollups
from fleet.ingest import Received, store_batch
from fleet.models import Device, Reading, Reject
from fleet.registry import register_device
from tests.fleet.conftest import Node
from tests.helpers import Observer, wait_until

BT = 1_795_686_126


def telemetry(seq: int, **values: float) -> dict:
    return {"seq": seq, "bt": BT + seq, "e": [{"n": n, "u": "Cel", "v": v} for n, v in values.items()]}


def readings(engine, device_id: str) -> list[tuple[int, str, float]]:
    with Session(engine) as s:
        rows = s.exec(
            select(Reading).where(Reading.device_id == device_id).order_by(Reading.seq, Reading.name)
        )
        return [(r.seq, r.name, r.value) for r in rows]


def device_row(engine, device_id: str) -> Device:
    with Session(engine) as s:
        return s.get(Device, device_id)


def received(topic: str, payload: dict | bytes) -> Received:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Received(topic, raw, datetime.now(UTC), contract.parse(topic, raw))


def test_store_batch_is_idempotent_and_rejects_unknown_devices(engine):
    with Session(engine) as s:
        register_device(s, "dev-1", "site", "1.01")
    batch = [
        received("maille/v1/dev-1/telemetry", telemetry(5, temperature=21.5, humidity=40)),
        received("maille/v1/dev-1/telemetry", telemetry(5, temperature=21.5, humidity=40)),
        received("maille/v1/dev-1/telemetry", telemetry(3, temperature=20)),
        received("maille/v1/ghost/telemetry", telemetry(1, temperature=1)),
        received("maille/v1/dev-1/health", {"uptime": 5, "heap_free": 1000, "rssi": None}),
        received("maille/v1/dev-1/state", b"{oops"),
    ]
    with Session(engine) as s:
        first = store_batch(s, batch)
    with Session(engine) as s:
        second = store_batch(s, batch[:3])
    assert (first.stored_readings, first.stored_messages, first.watermarks) == (3, 4, {"dev-1": 5})
    assert first.rejected == {"unknown_device": 1, "bad_json": 1}
    assert (second.stored_readings, second.watermarks) == (0, {"dev-1": 5})
    assert readings(engine, "dev-1") == [
        (3, "temperature", 20.0),
        (5, "humidity", 40.0),
        (5, "temperature", 21.5),
    ]
    dev = device_row(engine, "dev-1")
    assert dev.stored_seq == 5 and dev.last_health == {"uptime": 5, "heap_free": 1000, "rssi": None}
    with Session(engine) as s:
        assert s.exec(select(Reading.ts).where(Reading.seq == 3)).first() == datetime.fromtimestamp(
            BT + 3, UTC
        )
        assert [(r.reason, r.topic) for r in s.exec(select(Reject).order_by(Reject.id))] == [
            ("unknown_device", "maille/v1/ghost/telemetry"),
            ("bad_json", "maille/v1/dev-1/state"),
        ]


def test_rejects_are_kept_bounded(engine, monkeypatch):
    monkeypatch.setattr(ingest, "REJECTS_KEPT", 5)
    for i in range(3):
        with Session(engine) as s:
            store_batch(
                s, [received(f"maille/v1/ghost-{i}-{j}/state", {"state": "online"}) for j in range(4)]
            )
    with Session(engine) as s:
        kept = s.exec(select(Reject.topic).order_by(col(Reject.id))).all()
    assert kept == [f"maille/v1/ghost-{i}-{j}/state" for i, j in [(1, 3), (2, 0), (2, 1), (2, 2), (2, 3)]]


def test_large_batches_insert_in_chunks(engine):
    with Session(engine) as s:
        register_device(s, "dev-1", "site", "1.01")
    values = {f"m{i}": float(i) for i in range(64)}
    with Session(engine) as s:
        result = store_batch(
            s, [received("maille/v1/dev-1/telemetry", telemetry(seq, **values)) for seq in range(20)]
        )
    assert result.stored_readings == 20 * 64
    with Session(engine) as s:
        assert s.exec(select(func.count()).select_from(Reading)).one() == 20 * 64


def enroll(engine, broker, device_id: str) -> str:
    """Register a device in the fleet and give it a broker account; returns its password."""
    password = f"pw-{uuid.uuid4().hex}"
    broker.users.set_user(device_id, password)
    broker.reload()
    with Session(engine) as s:
        register_device(s, device_id, "site", "1.01")
    return password


def test_device_to_database_over_mqtt(engine, fresh_broker, ingest_factory):
    # A broker of the test's own: no retained messages of other tests, so every count is exact.
    broker, device_id, ghost = fresh_broker, "bliiida-2-14-a", "ghost-1"
    password = enroll(engine, broker, device_id)
    node = Node(broker, device_id, password)
    # The birth is retained and sent before ingest subscribes: ingest gets it as a retained message.
    node.send(
        "state",
        {"state": "online", "fw": "0.1.0", "board": "sim", "boot": 3, "reset": "power_on"},
        retain=True,
    )
    watermark = Observer(broker, [node.topic("stored")], user=device_id, password=password)
    fleet_side = Observer(broker, [])  # the fleet's own user may write any device topic
    try:
        running = ingest_factory(mqtt_url=broker.fleet_url)
        wait_until(lambda: device_row(engine, device_id).status == "online", 5, what="online")
        node.send("telemetry", telemetry(1, temperature=21.5, humidity=48.25))
        node.send("telemetry", telemetry(2, temperature=21.75, humidity=48.0))
        node.send("telemetry", telemetry(1, temperature=99, humidity=99))  # a redelivery of seq 1
        node.send("telemetry", {"seq": 3, "bt": BT, "e": [{"n": "temperature", "v": "hot"}]})
        node.send("health", {"uptime": 60, "heap_free": 61440, "faults": []})
        fleet_side.client.publish(f"maille/v1/{ghost}/telemetry", json.dumps(telemetry(1, t=1)), qos=1)

        _, payload, _ = watermark.wait(lambda t, p: json.loads(p).get("seq") == 2, 5)  # a birth gets {"t"}
        assert abs(json.loads(payload)["t"] - time.time()) < 10  # the fleet's clock, for nodes without NTP
        wait_until(
            lambda: running.stats.received == 7 and sum(running.stats.rejected.values()) == 2,
            5,
            what=f"all messages: {running.stats}",
        )
        assert readings(engine, device_id) == [
            (1, "humidity", 48.25),
            (1, "temperature", 21.5),
            (2, "humidity", 48.0),
            (2, "temperature", 21.75),
        ]
        assert running.stats.rejected["invalid"] == 1 and running.stats.rejected["unknown_device"] == 1
        assert (running.stats.stored_readings, running.stats.stored_messages) == (4, 5)
        dev = device_row(engine, device_id)
        assert (dev.fw, dev.boot, dev.reset, dev.stored_seq, dev.last_health["heap_free"]) == (
            "0.1.0",
            3,
            "power_on",
            2,
            61440,
        )
        assert dev.last_seen is not None and dev.last_seen.tzinfo == UTC

        node.vanish()  # power cut: the broker publishes the retained last will
        wait_until(lambda: device_row(engine, device_id).status == "offline", 10, what="offline after LWT")
    finally:
        watermark.close()
        fleet_side.close()
    # A later subscriber (the node after a reboot) gets the retained watermark.
    late = Observer(broker, [f"maille/v1/{device_id}/stored"], user=device_id, password=password)
    try:
        _, payload, retained = late.wait(lambda t, p: True, 5)
        assert retained and json.loads(payload)["seq"] == 2
    finally:
        late.close()


def test_clean_offline_state(engine, broker, device, node, ingest_factory):
    ingest_factory()
    node.send("state", {"state": "online", "fw": "0.2.0"}, retain=True)
    wait_until(lambda: device_row(engine, node.device_id).status == "online", 5, what="online")
    node.send("state", {"state": "offline", "reason": "shutdown"}, retain=True)
    wait_until(lambda: device_row(engine, node.device_id).status == "offline", 5, what="offline")
    assert device_row(engine, node.device_id).fw == "0.2.0"


def test_messages_sent_while_ingest_is_away_are_stored_on_return(
    engine, broker, device, node, ingest_factory
):
    client_id = f"ingest-{uuid.uuid4().hex[:8]}"
    ingest_factory(client_id).stop()  # creates the persistent session, then goes away
    for seq in range(1, 6):
        node.send("telemetry", telemetry(seq, temperature=seq))
    back = ingest_factory(client_id)
    wait_until(lambda: len(readings(engine, node.device_id)) == 5, 5, what="queued readings")
    # The rows are visible at the commit, in the database thread; the counters follow on the loop.
    wait_until(lambda: back.stats.stored_readings == 5, 5, what="the returning ingest counting them")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_ingest_reconnects_when_the_broker_restarts(engine, fresh_broker, ingest_factory):
    device_id = "dev-restart"
    password = enroll(engine, fresh_broker, device_id)
    running = ingest_factory(mqtt_url=fresh_broker.fleet_url)
    node = Node(fresh_broker, device_id, password)
    node.send("telemetry", telemetry(1, temperature=1))
    wait_until(lambda: len(readings(engine, device_id)) == 1, 5, what="first reading")
    node.close()

    fresh_broker.stop()
    wait_until(lambda: not running.ingest.subscribed.is_set(), 5, what="ingest to notice")
    fresh_broker.start()
    wait_until(running.ingest.subscribed.is_set, 5, what="ingest back")
    node = Node(fresh_broker, device_id, password)
    node.send("telemetry", telemetry(2, temperature=2))
    wait_until(lambda: len(readings(engine, device_id)) == 2, 5, what="reading after restart")
    node.close()


@settings(max_examples=100, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["dev-a", "dev-b"]),
            st.sampled_from(["co2", "temperature"]),
            st.integers(-1000, 1000).map(float),
            st.integers(BT - 3 * 86400, BT + 3 * 86400).map(lambda s: datetime.fromtimestamp(s, UTC)),
        ),
        max_size=60,
    )
)
def test_rollup_fold_equals_one_step_per_reading_and_resolution(rows):
    """Folding coarse buckets from fine ones gives what adding every reading to each bucket gives."""
    expected: dict[tuple, rollups.Agg] = {}
    for device_id, name, value, ts in rows:
        for resolution, seconds in rollups.RESOLUTIONS.items():
            key = (device_id, name, resolution, rollups.bucket_of(ts, seconds))
            if key in expected:
                expected[key].add(value, ts)
            else:
                expected[key] = rollups.Agg(1, value, value, value, value, ts)
    assert rollups.aggregate(rows) == expected


@pytest.mark.parametrize("read_size", [7, ingest._Receiver.READ_SIZE])
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_backlog_read_in_large_or_tiny_pieces_is_stored_whole(
    engine, broker, device, node, ingest_factory, monkeypatch, read_size
):
    """Ingest reads the socket in large pieces and parses every packet in them; packets cut across
    pieces (here, with 7-byte pieces, every one) come out whole, big ones included."""
    monkeypatch.setattr(ingest._Receiver, "READ_SIZE", read_size)
    client_id = f"ingest-{uuid.uuid4().hex[:8]}"
    ingest_factory(client_id).stop()  # the persistent session holds what follows
    for seq in range(300):
        node.send("telemetry", telemetry(seq, temperature=seq, humidity=seq / 2))
    node.send("telemetry", b'{"seq": 300, "bt": 1, "e": []' + b" " * 20_000 + b"}")  # oversized
    back = ingest_factory(client_id)
    # >=: the node's retained state may come on top of the backlog, depending on when it lands
    wait_until(lambda: back.stats.received >= 301, 20, what=f"the backlog: {back.stats}")
    wait_until(lambda: back.stats.stored_readings == 600, 10, what=f"stored: {back.stats}")
    assert back.stats.rejected["oversized"] == 1
    assert readings(engine, node.device_id)[-2:] == [(299, "humidity", 149.5), (299, "temperature", 299.0)]


def test_a_reject_quoting_nul_characters_is_stored_readably(engine):
    """A payload whose keys hold NUL characters is refused with a detail that quotes them; PostgreSQL
    takes no NUL in text, so they are stored escaped (hypothesis found this on PostgreSQL)."""
    with Session(engine) as s:
        register_device(s, "nul-1", "test-site", "1.01")
    topic, raw = "maille/v1/nul-1/telemetry", json.dumps({"k\x00ey": 1}).encode()
    with Session(engine) as s:
        store_batch(s, [Received(topic, raw, datetime.now(UTC), contract.parse(topic, raw))])
    with Session(engine) as s:
        reject = s.exec(select(Reject)).one()
    assert reject.reason == "invalid"
    assert "k\\x00ey: Extra inputs are not permitted" in reject.detail
    assert "\x00" not in reject.detail + reject.payload
