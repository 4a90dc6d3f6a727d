"""The rollout engine on an accelerated clock (issue 7, item 8): real database (SQLite, and PostgreSQL
when configured), real broker, the nodes' ota/status played by the test. Waves, the per-site cap with
randomized start, maintenance windows, "not while the building is occupied" from the site's calendar,
timeouts with retries, the failure threshold, abort, and the data-continuity gate."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console
from sqlmodel import Session, select

from fleet import contract, rollouts, sites
from fleet.calendar import Calendar
from fleet.cli import _rollout_view
from fleet.control import Publisher
from fleet.db import make_engine, upgrade
from fleet.models import AuditLog, Channel, Device, Release, RolloutTarget, RolloutWave, Site
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
def world(db_url, broker):
    engine = make_engine(db_url)
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


@pytest.mark.postgres_long  # engine logic: its PostgreSQL run is in `make test-long`
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


@pytest.mark.postgres_long  # engine logic: its PostgreSQL run is in `make test-long`
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


@pytest.mark.postgres_long  # engine logic: its PostgreSQL run is in `make test-long`
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


@pytest.mark.postgres_long  # engine logic: its PostgreSQL run is in `make test-long`
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
        waves = s.exec(select(RolloutWave).where(RolloutWave.rollout_id == r.id).order_by(RolloutWave.index))
        assert [w.status for w in waves] == ["aborted", "cancelled"]  # the canary under way; the next
    assert {t.state for t in targets(engine)} == {"cancelled"}
    for d in flying:
        topic = contract.topic_of(d, "ota")
        wait_until(
            lambda topic=topic: any(t == topic and not p for t, p, _ in seen.drain()), 5, what="withdrawal"
        )


WORKDAYS = {d: [{"start": "08:00", "end": "18:00"}] for d in ("mon", "tue", "wed", "thu", "fri")}


def set_calendar(engine, slug: str, week: dict) -> None:
    with Session(engine) as s:
        site = s.exec(select(Site).where(Site.slug == slug)).one()
        sites.set_calendar(s, site, Calendar.model_validate({"tz": "Europe/Paris", "week": week}), "ops")


def waiting(engine, rollout_id: int, now: datetime) -> list[str]:
    with Session(engine) as s:
        return rollouts.describe(s, s.get(rollouts.Rollout, rollout_id), now).waiting


def test_no_update_starts_while_the_building_is_occupied_and_the_status_says_until_when(world):
    engine, publisher, seen, prefix = world
    site_a = f"{prefix}-site-a"
    set_calendar(engine, site_a, WORKDAYS)  # occupied Mon–Fri 08:00–18:00, Paris time
    clock = Clock(datetime(2026, 3, 2, 6, 0, tzinfo=UTC))  # Monday 07:00 in Paris (CET)
    spec = RolloutSpec(
        release=V,
        targets={"sites": [site_a]},
        canary=1,
        waves=[100],
        site_cap=2,
        start_jitter_s=0,
        windows={site_a: [{"start": "17:00", "end": "23:00", "tz": "Europe/Paris"}]},
        timeout_s=3600,
    )
    with Session(engine) as s:
        rollout_id = rollouts.create_rollout(s, spec, "ops", rng=random.Random(4)).id
    engine_ = rollouts.RolloutEngine(engine, publisher.publish, BASE_URL, clock=clock)
    # 07:00: free, but outside the window; 12:00: occupied; 17:30: the window is open, still occupied
    occupied = "occupied until 18:00 (Europe/Paris)"
    for hour, why in (
        (6, "outside its maintenance windows"),
        (11, f"outside its maintenance windows and {occupied}"),
        (16.5, occupied),
    ):
        clock.now = datetime(2026, 3, 2, tzinfo=UTC) + timedelta(hours=hour)
        engine_.tick()
        assert [t.state for t in targets(engine)] == ["pending"] * 6
        assert waiting(engine, rollout_id, clock()) == [f"site {site_a} {why}: 1 devices waiting"]
    clock.now = datetime(2026, 3, 2, 16, 59, tzinfo=UTC)
    first_offer, capped = None, False
    for _ in range(5 * 60):
        engine_.tick()
        now = clock()
        flying = [t for t in targets(engine) if t.state == "offered"]
        if flying and first_offer is None:
            first_offer = now
        for t in flying:
            assert t.offered_at >= datetime(2026, 3, 2, 17, 0, tzinfo=UTC), (t.device_id, t.offered_at)
            if (now - t.offered_at).total_seconds() >= 420:
                report(engine, t.device_id, "confirmed", now, running=V)
        if any("at its cap of 2" in w for w in waiting(engine, rollout_id, now)):
            capped = True
        with Session(engine) as s:
            if s.get(rollouts.Rollout, rollout_id).status == "completed":
                break
        clock.advance(60)
    else:
        pytest.fail(f"not completed: {[(t.device_id, t.state) for t in targets(engine)]}")
    assert first_offer == datetime(2026, 3, 2, 17, 0, tzinfo=UTC)  # 18:00 in Paris, not 17:00
    assert capped and waiting(engine, rollout_id, clock()) == []
    assert clock() < datetime(2026, 3, 2, 22, 0, tzinfo=UTC)  # done inside the window


def test_updates_running_when_occupancy_starts_finish_and_the_next_wave_waits(world):
    engine, publisher, seen, prefix = world
    site_a, site_b = f"{prefix}-site-a", f"{prefix}-site-b"
    set_calendar(engine, site_b, {"mon": [{"start": "12:30", "end": "14:00"}]})
    set_calendar(engine, site_a, WORKDAYS)
    clock = Clock(datetime(2026, 3, 2, 11, 0, tzinfo=UTC))  # Monday 12:00 in Paris: site B still free
    spec = RolloutSpec(
        release=V, targets={"sites": [site_b]}, canary=2, waves=[100], start_jitter_s=0, timeout_s=7200
    )
    with Session(engine) as s:
        rollout_id = rollouts.create_rollout(s, spec, "ops", rng=random.Random(6)).id
    engine_ = rollouts.RolloutEngine(engine, publisher.publish, BASE_URL, clock=clock)
    engine_.tick()
    canary = [t.device_id for t in targets(engine) if t.state == "offered"]
    assert len(canary) == 2
    clock.advance(35 * 60)  # 12:35: occupied; the two updates already running go on
    engine_.tick()
    assert {t.device_id: t.state for t in targets(engine) if t.wave == 0} == dict.fromkeys(canary, "offered")
    for d in canary:
        report(engine, d, "confirmed", clock(), running=V)
    engine_.tick()  # the canary passed; wave 1 may not start before 14:00
    assert [t.state for t in targets(engine) if t.wave == 1] == ["pending", "pending"]
    why = f"site {site_b} occupied until 14:00 (Europe/Paris): 2 devices waiting"
    assert waiting(engine, rollout_id, clock()) == [why]
    with Session(engine) as s:  # and `maille rollout status` shows it
        shown = rollouts.describe(s, s.get(rollouts.Rollout, rollout_id), clock()).model_dump(mode="json")
    console = Console(record=True, width=200)
    console.print(_rollout_view(shown))
    assert f"waiting: {why}" in console.export_text()
    clock.now = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)
    engine_.tick()
    assert [t.state for t in targets(engine) if t.wave == 1] == ["offered", "offered"]
    # the canary's offers were never withdrawn (no empty retained `ota` for them)
    assert not [t for t, p, _ in seen.drain() if not p and t.split("/")[2] in canary]
    # an operator may choose to ignore the calendar: site A is occupied, its devices start at once
    spec = RolloutSpec(
        release=V, targets={"sites": [site_a]}, canary=6, waves=[100], start_jitter_s=0, avoid_occupied=False
    )
    with Session(engine) as s:
        ignoring = rollouts.create_rollout(s, spec, "ops", rng=random.Random(7)).id
    engine_.tick()
    assert sum(t.state == "offered" and t.rollout_id == ignoring for t in targets(engine)) == 5  # site cap
    assert waiting(engine, ignoring, clock()) == [
        f"site {site_a} at its cap of 5 updates at once: 1 devices waiting"
    ]


def test_a_calendar_stored_broken_holds_the_site(world):
    engine, publisher, seen, prefix = world
    site_b = f"{prefix}-site-b"
    with Session(engine) as s:
        s.exec(select(Site).where(Site.slug == site_b)).one().calendar = {"tz": "Mars/Olympus"}
        s.commit()
        spec = RolloutSpec(release=V, targets={"sites": [site_b]}, canary=1, waves=[100], start_jitter_s=0)
        rollout_id = rollouts.create_rollout(s, spec, "ops", rng=random.Random(1)).id
    clock = Clock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    rollouts.RolloutEngine(engine, publisher.publish, BASE_URL, clock=clock).tick()
    assert {t.state for t in targets(engine)} == {"pending"}
    assert waiting(engine, rollout_id, clock()) == [
        f"site {site_b} has an invalid calendar (Value error, unknown time zone 'Mars/Olympus'): "
        "1 devices waiting"
    ]
