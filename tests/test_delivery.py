"""The fault matrix for delivery: every reading a node takes is stored exactly once, in sequence.

Real parts throughout: virtual boards running `micropython`, a Mosquitto of the test's own (so it
can be stopped and SIGKILLed), the fleet's ingest, SQLite or PostgreSQL; checked from the database.
"""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import text
from sqlmodel import Session

from fleet.broker import LocalBroker
from fleet.registry import register_device
from tests.faultproxy import FaultProxy
from tests.helpers import node_config, wait_until


def add_device(broker: LocalBroker, engine, device_id: str | None = None) -> tuple[str, dict]:
    device_id = device_id or f"dev-{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    broker.users.set_user(device_id, password)
    broker.reload()
    with Session(engine) as s:
        register_device(s, device_id, "test-site", room="1.01", board="sim")
        s.commit()
    return device_id, {"user": device_id, "password": password}


def stored(engine, device_id: str) -> list[tuple[int, str, int]]:
    """(seq, name, insertion id) rows of a device."""
    with engine.connect() as c:
        q = text("SELECT seq, name, id FROM reading WHERE device_id = :d ORDER BY id")
        return [tuple(r) for r in c.execute(q, {"d": device_id}).all()]


def assert_exactly_once_in_sequence(engine, device_id: str, upto: int, names=("humidity", "temperature")):
    """Seqs 0..upto all stored, each with each measurement once, inserted in sequence order."""
    rows = stored(engine, device_id)
    pairs = [(s, n) for s, n, _ in rows]
    assert len(pairs) == len(set(pairs)), "a reading was stored twice"
    seqs = sorted({s for s, _ in pairs})
    missing = sorted(set(range(upto + 1)) - set(seqs))
    assert not missing, f"missing seqs {missing[:20]}"
    for seq in range(upto + 1):
        assert sorted(n for s, n in pairs if s == seq) == sorted(names)
    order = [s for s, _, _ in rows]
    assert order == sorted(order), "readings were stored out of sequence"


def max_contiguous(engine, device_id: str) -> int:
    seqs = {s for s, _, _ in stored(engine, device_id)}
    n = -1
    while n + 1 in seqs:
        n += 1
    return n


def last_sent(vb) -> int:
    seqs = vb.sent_seqs()
    return seqs[-1] if seqs else -1


def cfg_via(broker_or_proxy, device_id, **over) -> dict:
    over.setdefault("sample_interval_s", 0.2)
    cfg = node_config(device_id, broker_or_proxy, **over)
    return cfg


@pytest.mark.postgres_long  # the node and broker are what is tested; SQLite runs it in `make test`
@pytest.mark.parametrize(
    "outage_s",
    [
        pytest.param(12, id="12s"),
        pytest.param(300, id="5min", marks=[pytest.mark.long, pytest.mark.timeout(900)]),
    ],
)
def test_broker_stopped_for_a_while_loses_nothing(fleet_service, fresh_broker, boards, tmp_path, outage_s):
    fleet = fleet_service(on=fresh_broker)
    vbs = []
    for _ in range(2):
        d, creds = add_device(fresh_broker, fleet.engine)
        vbs.append(boards(tmp_path / d, cfg_via(fresh_broker, d), creds).start())
    for vb in vbs:
        vb.wait_for(r"sent seq=10\b", 30)
    fresh_broker.stop()
    time.sleep(outage_s)
    during = [max(vb.sent_seqs()) for vb in vbs]
    fresh_broker.start()
    targets = [s + int(outage_s / 0.2 * 0.8) for s in during]  # what was sampled during the outage
    for vb, target in zip(vbs, targets, strict=True):
        wait_until(
            lambda vb=vb, t=target: max_contiguous(fleet.engine, vb.device_id) >= t,
            60,
            what="the outage's readings",
        )
    for vb in vbs:
        vb.power_cut()
        assert_exactly_once_in_sequence(
            fleet.engine, vb.device_id, max_contiguous(fleet.engine, vb.device_id)
        )


def test_broker_killed_holding_unsaved_queues_loses_nothing(fleet_service, fresh_broker, boards, tmp_path):
    fleet = fleet_service(on=fresh_broker)
    d, creds = add_device(fresh_broker, fleet.engine)
    vb = boards(tmp_path / d, cfg_via(fresh_broker, d), creds).start()
    vb.wait_for(r"sent seq=5\b", 30)
    fleet.stop()  # ingest away: the broker queues the node's messages for its persistent session
    before = last_sent(vb)
    wait_until(lambda: last_sent(vb) >= before + 15, 20, what="messages queued in the broker")
    queued_upto = last_sent(vb)
    fresh_broker.kill()  # SIGKILL: whatever the broker had not saved is gone
    fresh_broker.start()
    fleet = fleet_service(on=fresh_broker)
    # 120 s: the node's reconnect backoff doubles while the broker is down (up to 60 s with jitter);
    # on a saturated machine the restarts take long enough for it to reach 16-32 s.
    wait_until(lambda: max_contiguous(fleet.engine, d) >= queued_upto + 5, 120, what="re-sent readings")
    vb.power_cut()
    assert_exactly_once_in_sequence(fleet.engine, d, max_contiguous(fleet.engine, d))


def test_node_killed_with_500_readings_in_its_outbox_loses_none(fleet_service, broker, boards, tmp_path):
    fleet = fleet_service()
    proxy = FaultProxy(broker.host, broker.port).start()
    try:
        proxy.set_mode("partition")
        d, creds = add_device(broker, fleet.engine)
        vb = boards(tmp_path / d, cfg_via(proxy, d, sample_interval_s=0.01), creds).start()
        wait_until(lambda: len(vb.flash_outbox()) >= 520, 60, what="500 readings in the outbox")
        vb.power_cut()
        waiting = vb.flash_outbox()
        assert len(waiting) >= 500
        proxy.set_mode("pass")
        vb.start()
        wait_until(
            lambda: {s for s, _, _ in stored(fleet.engine, d)} >= set(waiting),
            60,
            what="every reading that waited in the outbox",
        )
        # ...and, behind them in sequence order, readings taken since the restart.
        wait_until(
            lambda: max(s for s, _, _ in stored(fleet.engine, d)) > max(waiting), 30, what="new readings"
        )
        vb.power_cut()
        with fleet.engine.connect() as c:
            rows = c.execute(
                text("SELECT seq, name, value FROM reading WHERE device_id = :d"), {"d": d}
            ).all()
        import json

        by_seq = {}
        for seq, name, value in rows:
            by_seq.setdefault(seq, {})[name] = value
        for seq, payload in waiting.items():  # the stored values are the ones taken before the kill
            assert by_seq[seq] == {e["n"]: e["v"] for e in json.loads(payload)["e"]}
        # sequence numbers taken after the restart are above anything taken before: no repeats
        assert min(s for s in by_seq if s not in waiting) > max(waiting)
        assert_exactly_once_in_sequence(fleet.engine, d, max(waiting))
    finally:
        proxy.stop()


def test_half_open_link_is_detected_within_one_and_a_half_keepalive(fleet_service, broker, boards, tmp_path):
    fleet = fleet_service()
    proxy = FaultProxy(broker.host, broker.port).start()
    try:
        d, creds = add_device(broker, fleet.engine)
        keepalive = 4
        cfg = cfg_via(proxy, d)
        cfg["mqtt"]["keepalive"] = keepalive
        vb = boards(tmp_path / d, cfg, creds).start()
        vb.wait_for(r"sent seq=5\b", 30)
        mark = len(vb.console())
        proxy.set_mode("stall")
        t0 = time.monotonic()
        vb.wait_for(r"link lost: no answer from the broker", 3 * keepalive, after=mark)
        detected = time.monotonic() - t0
        assert detected <= 1.5 * keepalive + 0.5, f"dead link noticed after {detected:.1f}s"
        proxy.set_mode("pass")
        upto = last_sent(vb) + 20
        wait_until(lambda: max_contiguous(fleet.engine, d) >= upto, 60, what="readings after recovery")
        vb.power_cut()
        assert_exactly_once_in_sequence(fleet.engine, d, max_contiguous(fleet.engine, d))
    finally:
        proxy.stop()


@pytest.mark.postgres_long  # the node and broker are what is tested; SQLite runs it in `make test`
@pytest.mark.parametrize(
    "partition_s",
    [
        pytest.param(20, id="20s"),
        pytest.param(240, id="4min", marks=[pytest.mark.long, pytest.mark.timeout(900)]),
    ],
)
def test_partition_loses_nothing(fleet_service, broker, boards, tmp_path, partition_s):
    fleet = fleet_service()
    proxy = FaultProxy(broker.host, broker.port).start()
    try:
        d, creds = add_device(broker, fleet.engine)
        vb = boards(tmp_path / d, cfg_via(proxy, d, sample_interval_s=0.5), creds).start()
        vb.wait_for(r"sent seq=3\b", 30)
        proxy.set_mode("partition")
        proxy.drop()
        time.sleep(partition_s)
        proxy.set_mode("pass")
        target = last_sent(vb) + int(partition_s / 0.5 * 0.8)
        wait_until(lambda: max_contiguous(fleet.engine, d) >= target, 90, what="the partition's readings")
        vb.power_cut()
        assert_exactly_once_in_sequence(fleet.engine, d, max_contiguous(fleet.engine, d))
    finally:
        proxy.stop()


def test_network_link_cut_on_the_board_loses_nothing(fleet_service, broker, boards, tmp_path):
    fleet = fleet_service()
    d, creds = add_device(broker, fleet.engine)
    vb = boards(tmp_path / d, cfg_via(broker, d, sample_interval_s=0.2), creds).start()
    vb.wait_for(r"sent seq=3\b", 30)
    mark = len(vb.console())
    (vb.root / "link-down").touch()  # the Wi-Fi goes away
    vb.wait_for(r"net: link down", 15, after=mark)
    time.sleep(3)
    assert (vb.root / "data" / "outbox").glob("*.log"), "readings taken offline went to flash"
    (vb.root / "link-down").unlink()
    target = last_sent(vb) + 10
    wait_until(
        lambda: max_contiguous(fleet.engine, d) >= target, 60, what="readings after the link came back"
    )
    vb.power_cut()
    assert_exactly_once_in_sequence(fleet.engine, d, max_contiguous(fleet.engine, d))


def test_readings_taken_before_the_clock_is_known_get_their_true_time(
    fleet_service, broker, boards, tmp_path
):
    """A node without NTP starts near 2000-01-01; it learns the time from the fleet's answer to its
    birth and dates what it sampled before from the readings' age: never stored as 1970 or 2000."""
    from datetime import UTC, datetime

    fleet = fleet_service()
    d, creds = add_device(broker, fleet.engine)
    vb = boards(tmp_path / d, cfg_via(broker, d, sample_interval_s=0.2), creds)
    (vb.root / "clock-unset").touch()
    (vb.root / "link-down").touch()
    started = time.time()
    vb.start()
    time.sleep(3)
    (vb.root / "link-down").unlink()
    vb.wait_for(r"time: set from the fleet's clock", 20)
    wait_until(lambda: max_contiguous(fleet.engine, d) >= 20, 30, what="readings")
    vb.power_cut()
    with fleet.engine.connect() as c:
        q = text("SELECT seq, ts FROM reading WHERE device_id = :d AND name = 'temperature' ORDER BY seq")
        rows = c.execute(q, {"d": d}).all()

    def aware(ts):  # SQLite hands back text, PostgreSQL a datetime
        ts = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)

    stamps = [(seq, aware(ts)) for seq, ts in rows]
    first = stamps[0][1].timestamp()
    assert stamps[0][0] == 0
    assert abs(first - started) < 3, f"seq 0 stamped {datetime.fromtimestamp(first, UTC)}"
    assert all(abs(ts.timestamp() - time.time()) < 120 for _, ts in stamps)  # no 1970, no 2000
    times = [ts.timestamp() for _, ts in stamps]
    assert times == sorted(times)
