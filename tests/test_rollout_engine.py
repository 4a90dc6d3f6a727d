"""The rollout engine on an accelerated clock (issue 7, item 8): real database, real broker, the nodes'
ota/status played by the test. Waves, the per-site cap with randomized start, maintenance windows,
timeouts with retries, the failure threshold, abort, and the data-continuity gate."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, select

from fleet import contract, rollouts
from fleet.control import Publisher
from fleet.db import make_engine, upgrade
from fleet.models import AuditLog, Channel, Device, Release, RolloutTarget, RolloutWave
from fleet.registry import register_device
from fleet.rollouts import RolloutSpec
from tests.helpers import Observer, wait_until

BASE_URL = "http://bundles.test:8001"
V = "2.0.0"


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def world(tmp_path, broker):
    engine = make_engine(f"sqlite:///{tmp_path / 'maille.db'}")
    upgrade(engine)
    prefix = f"r{random.randrange(16**6):06x}"
    with Session(engine) as s:
        for site, n in (("site-a", 6), ("site-b", 4)):
            for i in range(n):
                d = register_device(s, f"{prefix}-{site[-1]}{i}", f"{prefix}-{site}", "1.01")
                d.fw = "1.0.0"
        s.add(
            Release(
                version=V, arch="host", manifest_sha256="0" * 64, key_id="k", path=f"{V}-host", created_by="t"
            )
        )
        s.commit()
    publisher = Publisher(broker.fleet_url, f"test-rollouts-{prefix}")
    seen = Offers(broker, prefix)
    yield engine, publisher, seen, prefix
    seen.close()
    for topic in {t for t, _, _ in seen.drain()}:
        publisher.publish(topic, "", retain=True)
    publisher.close()
    engine.dispose()


class Offers(Observer):
    """The retained `ota` offers of this test's devices (the broker is shared by the session)."""

    def __init__(self, broker, prefix: str) -> None:
        self.prefix = f"maille/v1/{prefix}-"
        super().__init__(broker, ["maille/v1/+/ota"])

    def drain(self):
        return [m for m in super().drain() if m[0].startswith(self.prefix)]


def report(engine, device_id: str, state: str, at: datetime, running="1.0.0", **kw) -> None:
    msg = contract.OtaStatus.received(device_id, {"state": state, "version": V, "running": running, **kw})
    with Session(engine) as s:
        rollouts.apply_ota_status(s, s.get(Device, device_id), msg, at)
        s.commit()


def targets(engine) -> list[RolloutTarget]:
    with Session(engine) as s:
        return list(s.exec(select(RolloutTarget).order_by(RolloutTarget.id)))


def test_site_cap_randomized_start_and_maintenance_window_hold(world):
    engine, publisher, seen, prefix = world
    clock = Clock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))  # a Monday, noon UTC
    spec = RolloutSpec(
        release=V,
        targets={"sites": [f"{prefix}-site-a", f"{prefix}-site-b"]},
        canary=1,
        waves=[100],
        site_cap=2,
        start_jitter_s=300,
        windows={f"{prefix}-site-a": [{"start": "22:00", "end": "02:00"}]},  # overnight only
        timeout_s=3600,
    )
    with Session(engine) as s:
        sites = {d.id: d.site_id for d in s.exec(select(Device))}
        site_a = next(v for k, v in sites.items() if k.startswith(f"{prefix}-a"))
        rollout = rollouts.create_rollout(s, spec, "ops", rng=random.Random(3))
        rollout_id = rollout.id
        assert [w.size for w in s.exec(select(RolloutWave).order_by(RolloutWave.index))] == [1, 9]
        assert s.exec(select(AuditLog).where(AuditLog.entity == "rollout")).one().action == "create"
    engine_ = rollouts.RolloutEngine(engine, publisher.publish, BASE_URL, clock=clock, rng=random.Random(5))
    offered_at: dict[str, datetime] = {}
    peak: dict[int, int] = {}
    for _ in range(24 * 60):  # up to a day in 1-minute steps
        engine_.tick()
        now = clock()
        ts = targets(engine)
        flying = [t for t in ts if t.state == "offered"]
        for t in flying:
            offered_at.setdefault(t.device_id, now)
            # the window holds: site A devices get their offer only between 22:00 and 02:00
            if t.site_id == site_a:
                assert now.hour >= 22 or now.hour < 2, (t.device_id, now)
        for site in set(sites.values()):
            n = sum(t.site_id == site for t in flying)
            assert n <= 2, f"site cap broken at {now}: {n}"
            peak[site] = max(peak.get(site, 0), n)
        for t in flying:  # each node takes 7 minutes to confirm
            if (now - t.offered_at).total_seconds() >= 420:
                report(engine, t.device_id, "confirmed", now, running=V)
        with Session(engine) as s:
            if s.get(rollouts.Rollout, rollout_id).status == "completed":
                break
        clock.advance(60)
    else:
        pytest.fail(f"not completed: {[(t.device_id, t.state) for t in targets(engine)]}")
    assert all(t.state == "confirmed" for t in targets(engine))
    assert peak[site_a] == 2 and max(peak.values()) == 2
    a_times = sorted(at for d, at in offered_at.items() if d.startswith(f"{prefix}-a"))
    assert a_times[0].hour == 22  # waited for the window
    b_times = sorted(at for d, at in offered_at.items() if d.startswith(f"{prefix}-b"))
    assert len({t for t in b_times}) > 1  # randomized and capped: not all at one instant
    # every device got exactly one retained offer with the release's manifest URL
    wait_until(lambda: len({t for t, p, _ in seen.drain() if p}) == 10, 5, what="10 offers")
    offers = [json.loads(p) for _, p, _ in seen.drain() if p]
    assert all(o == {"version": V, "url": f"{BASE_URL}/releases/{V}-host/manifest.json"} for o in offers)


def test_timeouts_are_retried_then_the_failure_threshold_halts_and_withdraws(world):
    engine, publisher, seen, prefix = world
    clock = Clock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    spec = RolloutSpec(
        release=V,
        targets={"sites": [f"{prefix}-site-b"]},
        canary=2,
        waves=[100],
        timeout_s=600,
        retries=1,
        failure_threshold=0.5,
        start_jitter_s=0,
    )
    with Session(engine) as s:
        rollout_id = rollouts.create_rollout(s, spec, "ops", rng=random.Random(1)).id
    engine_ = rollouts.RolloutEngine(engine, publisher.publish, BASE_URL, clock=clock)
    engine_.tick()
    canary = [t for t in targets(engine) if t.state == "offered"]
    assert len(canary) == 2 and all(t.wave == 0 for t in canary)
    report(engine, canary[0].device_id, "downloading", clock(), progress=40)
    report(engine, canary[1].device_id, "confirmed", clock(), running=V)
    clock.advance(601)
    engine_.tick()  # timed out: offered again with attempt 1
    t0 = next(t for t in targets(engine) if t.device_id == canary[0].device_id)
    assert (t0.state, t0.attempt) == ("offered", 2)
    topic = contract.topic_of(t0.device_id, "ota")
    wait_until(
        lambda: any(t == topic and p and json.loads(p).get("attempt") == 1 for t, p, _ in seen.drain()), 5
    )
    clock.advance(601)
    engine_.tick()  # timed out again, no retries left: 1 of 2 = the failure threshold
    with Session(engine) as s:
        r = s.get(rollouts.Rollout, rollout_id)
        assert r.status == "halted" and "wave 0: 1 of 2 failed" in r.reason, r.reason
        assert "timed_out" in r.reason
    states = {t.device_id: t.state for t in targets(engine)}
    assert states[t0.device_id] == "timed_out" and states[canary[1].device_id] == "confirmed"
    assert sorted(set(states.values())) == ["cancelled", "confirmed", "timed_out"]
    # no device outside the canary ever got an offer; the timed-out one's offer is withdrawn
    wait_until(
        lambda topic=topic: any(t == topic and not p for t, p, _ in seen.drain()), 5, what="withdrawal"
    )
    offered = {t for t, p, _ in seen.drain() if p}
    assert offered == {contract.topic_of(t.device_id, "ota") for t in canary}


def test_data_continuity_gate_halts_when_a_channel_stops_after_the_update(world):
    engine, publisher, seen, prefix = world
    clock = Clock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    devices = sorted(d for d in [f"{prefix}-b{i}" for i in range(4)])
    with Session(engine) as s:
        for d in devices:
            for name in ("temperature", "co2"):
                s.add(Channel(device_id=d, name=name, last_ts=clock(), last_at=clock(), interval_s=30.0))
        s.commit()
        spec = RolloutSpec(
            release=V, targets={"devices": devices}, canary=1, waves=[100], start_jitter_s=0, gate_s=300
        )
        rollout_id = rollouts.create_rollout(s, spec, "ops", rng=random.Random(2)).id
    engine_ = rollouts.RolloutEngine(engine, publisher.publish, BASE_URL, clock=clock)
    engine_.tick()
    (canary,) = [t for t in targets(engine) if t.state == "offered"]
    clock.advance(60)
    report(engine, canary.device_id, "confirmed", clock(), running=V)

    def readings(names):
        with Session(engine) as s:
            for c in s.exec(select(Channel).where(Channel.device_id == canary.device_id)):
                if c.name in names:
                    c.last_at = c.last_ts = clock()
            s.commit()

    clock.advance(30)
    readings({"temperature"})  # co2 stopped with the new release
    engine_.tick()
    with Session(engine) as s:
        wave = s.exec(
            select(RolloutWave).where(RolloutWave.index == 0, RolloutWave.rollout_id == rollout_id)
        ).one()
        assert wave.status == "gate"
        assert wave.gate["problems"] == {canary.device_id: ["co2: nothing since the update"]}
    for _ in range(10):
        clock.advance(30)
        readings({"temperature"})
        engine_.tick()
    with Session(engine) as s:
        r = s.get(rollouts.Rollout, rollout_id)
        assert r.status == "halted" and "data continuity" in r.reason and "co2" in r.reason, r.reason
    assert [t.state for t in targets(engine) if t.wave == 1] == ["cancelled"] * 3


def test_pause_resume_abort_are_audited_and_abort_withdraws(world):
    engine, publisher, seen, prefix = world
    clock = Clock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    spec = RolloutSpec(
        release=V, targets={"sites": [f"{prefix}-site-b"]}, canary=2, waves=[100], start_jitter_s=0
    )
    engine_ = rollouts.RolloutEngine(engine, publisher.publish, BASE_URL, clock=clock)
    with Session(engine) as s:
        r = rollouts.create_rollout(s, spec, "ops", rng=random.Random(1))
        rollouts.change(s, r, "pause", "ops", None, clock())
    engine_.tick()
    assert all(t.state == "pending" for t in targets(engine))  # paused: nothing offered
    with Session(engine) as s:
        r = s.get(rollouts.Rollout, r.id)
        with pytest.raises(rollouts.RolloutError):
            rollouts.change(s, r, "pause", "ops", None, clock())
        rollouts.change(s, r, "resume", "ops", None, clock())
    engine_.tick()
    flying = [t.device_id for t in targets(engine) if t.state == "offered"]
    assert len(flying) == 2
    with Session(engine) as s:
        r = rollouts.change(s, s.get(rollouts.Rollout, r.id), "abort", "ops", publisher.publish, clock())
        assert r.status == "aborted"
        actions = [a.action for a in s.exec(select(AuditLog).where(AuditLog.entity == "rollout"))]
        assert actions == ["create", "pause", "resume", "abort"]
    assert {t.state for t in targets(engine)} == {"cancelled"}
    for d in flying:
        topic = contract.topic_of(d, "ota")
        wait_until(
            lambda topic=topic: any(t == topic and not p for t, p, _ in seen.drain()), 5, what="withdrawal"
        )
