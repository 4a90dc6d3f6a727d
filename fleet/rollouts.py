"""Rollouts: a published release offered to chosen devices, wave by wave, stopping by itself.

A rollout is planned when it is created: its devices (by site, building, board, tag, current version
or id) are shuffled and cut into waves, a canary of `canary` devices and then cumulative percentages.
The engine (`RolloutEngine`, run by `fleet.service.serve` on an injectable clock) looks at each running
rollout every `rollout_interval_s`, and whenever a node reports on `ota/status`:

- it starts a wave's devices after a random delay (`start_jitter_s`), at most `site_cap` updating at
  once per site (over every rollout), only inside the site's maintenance windows and, unless
  `avoid_occupied` is off, never while the site's calendar (fleet.calendar) says the building is
  occupied, by publishing the retained `ota` offer (updates already running finish); `describe` says
  why the current wave waits;
- it follows each node's `ota/status` to confirmed, rolled_back or failed, and times a device out
  after `timeout_s`; a failure or a timeout is offered again (a new `attempt`) up to `retries` times
  (a rollback is not: the release crashed on that node);
- the wave's failures reaching `failure_threshold` (a fraction of the wave) halt the rollout at once;
- a finished wave advances when at least `success_threshold` of it confirmed and the data-continuity
  gate passes: every updated node publishes again each channel it published before the update, at
  its usual cadence (`gate_factor` × the cadence learned before), within `gate_s`;
- pause stops new offers; abort (and a halt) withdraw the retained offers of the devices not done.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import Counter
from collections.abc import Callable
from datetime import datetime, time, timedelta
from typing import Annotated, Any, Protocol
from zoneinfo import ZoneInfo

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from fleet import audit, contract, control
from fleet import calendar as calendars
from fleet.bundles import manifest_url
from fleet.calendar import TimeZone
from fleet.ingest import fleet_client
from fleet.models import (
    Building,
    Channel,
    Device,
    Floor,
    Lifecycle,
    Reject,
    Release,
    Rollout,
    RolloutStatus,
    RolloutTarget,
    RolloutWave,
    Room,
    Site,
    utcnow,
)
from fleet.settings import mask_url, parse_mqtt_url

log = logging.getLogger("maille.rollouts")

IN_FLIGHT = "offered"
BAD = frozenset({"rolled_back", "failed", "timed_out"})
DONE = BAD | {"confirmed", "cancelled"}
ACTIVE = (RolloutStatus.running, RolloutStatus.paused)
GATE_SLACK_S = 5.0  # added to factor × cadence: transport and batching delays


class RolloutError(ValueError):
    """A rollout that cannot be made or changed as asked (the API answers 422 or 409)."""


# --- the spec ------------------------------------------------------------------------------------
class Window(BaseModel):
    """A maintenance window: [start, end) local time on the given weekdays (0 = Monday; all if absent);
    end before start spans midnight."""

    model_config = ConfigDict(extra="forbid")

    start: time
    end: time
    days: list[Annotated[int, Field(ge=0, le=6)]] | None = None
    tz: TimeZone = "UTC"

    def open_at(self, now: datetime) -> bool:
        local = now.astimezone(ZoneInfo(self.tz))
        t, day = local.time().replace(tzinfo=None), local.weekday()
        if self.start <= self.end:
            return (self.days is None or day in self.days) and self.start <= t < self.end
        if t >= self.start:  # the evening part: the window opened today
            return self.days is None or day in self.days
        if t < self.end:  # the morning part: it opened yesterday
            return self.days is None or (day - 1) % 7 in self.days
        return False


class Targets(BaseModel):
    """Which devices: every filter given must match (a list matches any of its values)."""

    model_config = ConfigDict(extra="forbid")

    sites: list[str] = Field(default_factory=list)  # site slugs
    buildings: list[str] = Field(default_factory=list)  # building slugs
    boards: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    versions: list[str] = Field(default_factory=list)  # the firmware they run now
    devices: list[str] = Field(default_factory=list)


class RolloutSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    release: str = Field(pattern=contract.VERSION_PATTERN)
    arch: str | None = None  # needed only when the version is published for several
    name: str = Field("", max_length=64)
    targets: Targets = Field(default_factory=Targets)
    canary: int = Field(1, ge=1)
    waves: list[Annotated[float, Field(gt=0, le=100)]] = Field(default_factory=lambda: [50.0, 100.0])
    success_threshold: float = Field(0.9, ge=0, le=1)
    failure_threshold: float = Field(0.2, gt=0, le=1)
    timeout_s: float = Field(1800, gt=0)
    retries: int = Field(1, ge=0, le=10)
    site_cap: int = Field(5, ge=1)
    start_jitter_s: float = Field(60, ge=0)
    windows: dict[str, list[Window]] = Field(default_factory=dict)  # site slug → windows; none: any time
    # No update starts on a site while its calendar says occupied (sites without a calendar: any time).
    avoid_occupied: bool = True
    gate_s: float = Field(600, ge=0)
    gate_factor: float = Field(3.0, ge=1)

    @model_validator(mode="after")
    def _waves_climb_to_all(self) -> RolloutSpec:
        if self.waves != sorted(self.waves) or self.waves[-1] != 100:
            raise ValueError("waves: cumulative percentages, rising, ending at 100")
        return self


class TargetOut(BaseModel):
    device: str
    wave: int
    state: str
    node_state: str | None
    progress: int | None
    attempt: int
    from_version: str | None
    running: str | None
    reason: str | None


class WaveOut(BaseModel):
    index: int
    size: int
    status: str
    counts: dict[str, int]
    gate: dict[str, Any] | None


class RolloutOut(BaseModel):
    id: int
    name: str
    release: str
    arch: str
    status: str
    reason: str | None
    wave: int
    created_at: datetime
    created_by: str
    finished_at: datetime | None
    counts: dict[str, int]
    waiting: list[str]  # why devices of the current wave have not started, per site
    waves: list[WaveOut]
    targets: list[TargetOut]


# --- planning ------------------------------------------------------------------------------------
def find_release(session: Session, version: str, arch: str | None) -> Release:
    query = select(Release).where(Release.version == version)
    if arch:
        query = query.where(Release.arch == arch)
    found = session.exec(query).all()
    if not found:
        raise LookupError(f"no published release {version}" + (f" for {arch}" if arch else ""))
    if len(found) > 1:
        raise RolloutError(
            f"release {version} is published for {', '.join(r.arch for r in found)}: give arch"
        )
    return found[0]


def _arch_of(board: str) -> str | None:
    from provisioning.boards import UnknownBoard, load_board

    try:
        return load_board(board).arch
    except (UnknownBoard, OSError, ValueError):
        return None


def select_devices(session: Session, targets: Targets, rel: Release) -> list[Device]:
    """The devices a rollout of `rel` would update: matching every filter, not retired, built for the
    release's processor (when their board is known), not already running it, and in no other active
    rollout."""
    query = select(Device).where(Device.lifecycle != Lifecycle.retired)
    if targets.sites:
        query = query.join(Site, Site.id == Device.site_id).where(col(Site.slug).in_(targets.sites))
    if targets.buildings:
        query = (
            query.join(Room, Room.id == Device.room_id)
            .join(Floor, Floor.id == Room.floor_id)
            .join(Building, Building.id == Floor.building_id)
            .where(col(Building.slug).in_(targets.buildings))
        )
    if targets.boards:
        query = query.where(col(Device.board).in_(targets.boards))
    if targets.versions:
        query = query.where(col(Device.fw).in_(targets.versions))
    if targets.devices:
        query = query.where(col(Device.id).in_(targets.devices))
    busy = set(
        session.exec(
            select(RolloutTarget.device_id)
            .join(Rollout, Rollout.id == RolloutTarget.rollout_id)
            .where(col(Rollout.status).in_(ACTIVE), col(RolloutTarget.state).not_in(DONE))
        ).all()
    )
    chosen = []
    for d in session.exec(query.order_by(Device.id)).all():
        if targets.tags and not set(targets.tags) & set(d.tags or ()):
            continue
        arch = _arch_of(d.board)
        if rel.arch != "py" and arch is not None and arch != rel.arch:
            continue
        if d.fw == rel.version or d.id in busy:
            continue
        chosen.append(d)
    return chosen


def plan_waves(n: int, canary: int, percents: list[float]) -> list[int]:
    """Wave sizes: the canary, then up to each cumulative percentage of n; empty waves dropped."""
    sizes, placed = [min(canary, n)], min(canary, n)
    for pct in percents:
        upto = max(placed, min(n, math.ceil(n * pct / 100 - 1e-9)))
        sizes.append(upto - placed)
        placed = upto
    return [s for s in sizes if s > 0]


def create_rollout(
    session: Session, spec: RolloutSpec, who: str, *, rng: random.Random | None = None, site_ids=None
) -> Rollout:
    """Plan a rollout (its waves and targets) and store it, running; commits. `site_ids`: the caller's
    site scope (None: every site) — a device outside it refuses the whole rollout."""
    rng = rng or random.Random()
    rel = find_release(session, spec.release, spec.arch)
    devices = select_devices(session, spec.targets, rel)
    if not devices:
        raise RolloutError("no device matches the targets (or all run this release already)")
    if site_ids is not None and any(d.site_id not in site_ids for d in devices):
        raise PermissionError("the targets include devices of sites this token may not reach")
    rng.shuffle(devices)
    for site, windows in spec.windows.items():
        if session.exec(select(Site).where(Site.slug == site)).first() is None:
            raise RolloutError(f"windows: no site {site!r}")
        if not windows:
            raise RolloutError(f"windows.{site}: give at least one window (or leave the site out)")
    rollout = Rollout(release_id=rel.id, name=spec.name, spec=spec.model_dump(mode="json"), created_by=who)
    session.add(rollout)
    session.flush()
    placed = 0
    for index, size in enumerate(plan_waves(len(devices), spec.canary, spec.waves)):
        session.add(RolloutWave(rollout_id=rollout.id, index=index, size=size))
        for d in devices[placed : placed + size]:
            session.add(
                RolloutTarget(
                    rollout_id=rollout.id, device_id=d.id, site_id=d.site_id, wave=index, from_version=d.fw
                )
            )
        placed += size
    session.flush()
    audit.record(session, who, "create", "rollout", rollout.id, after=audit.snapshot(rollout))
    session.commit()
    session.refresh(rollout)
    return rollout


# --- what nodes report -----------------------------------------------------------------------------
def apply_ota_status(session: Session, device: Device, msg: contract.OtaStatus, at: datetime) -> None:
    """Fold one `ota/status` into the device (the version it runs) and into its rollout target, if it
    is about the release that target offers. The caller commits."""
    device.fw = msg.running or device.fw
    target = session.exec(
        select(RolloutTarget)
        .join(Rollout, Rollout.id == RolloutTarget.rollout_id)
        .join(Release, Release.id == Rollout.release_id)
        .where(
            RolloutTarget.device_id == device.id,
            Release.version == msg.version,
            col(RolloutTarget.state).not_in(DONE),
        )
        .order_by(col(Rollout.id).desc())
    ).first()
    if target is None:
        return
    target.node_state, target.updated_at, target.running = msg.state, at, msg.running
    if msg.progress is not None:
        target.progress = msg.progress
    if msg.reason is not None:
        target.reason = msg.reason[:200]
    if msg.state == "confirmed" and msg.running == msg.version:
        target.state, target.finished_at, target.reason = "confirmed", at, None
    elif msg.state == "rolled_back":
        target.state, target.finished_at = "rolled_back", at  # the release crashed there: no retry
    elif msg.state == "failed":
        target.state = "failed"  # the engine retries it if attempts are left
        target.finished_at = at
    elif target.state == "pending":
        target.state = IN_FLIGHT


# --- the engine ----------------------------------------------------------------------------------
class Publish(Protocol):
    def __call__(self, topic: str, payload: str, *, retain: bool = False) -> None: ...


def _offer_payload(rel: Release, base_url: str, attempt: int) -> str:
    fields: dict[str, Any] = {"version": rel.version, "url": manifest_url(base_url, rel)}
    if rel.rollback:
        fields["rollback"] = True
    if attempt:
        fields["attempt"] = attempt
    return contract.Ota.model_validate(fields).model_dump_json(exclude_none=True)


def _channels_of(session: Session, device_id: str) -> dict[str, float | None]:
    return {c.name: c.interval_s for c in session.exec(select(Channel).where(Channel.device_id == device_id))}


def open_now(spec: RolloutSpec, site_slug: str, now: datetime) -> bool:
    windows = spec.windows.get(site_slug)
    return windows is None or any(w.open_at(now) for w in windows)


SiteCalendar = calendars.Calendar | str | None  # a str: why the stored calendar cannot be used


def site_calendars(session: Session) -> dict[int, tuple[str, SiteCalendar]]:
    """Each site's slug and calendar. A stored calendar that no longer validates holds the site
    (it is safer to wait than to update an occupied building) and says why."""
    out: dict[int, tuple[str, SiteCalendar]] = {}
    for site_id, slug, raw in session.exec(select(Site.id, Site.slug, Site.calendar)):
        try:
            out[site_id] = (slug, calendars.of(raw))
        except ValidationError as e:
            out[site_id] = (slug, f"has an invalid calendar ({e.errors()[0]['msg']})")
    return out


def _local(at: datetime, now: datetime) -> str:
    """A local time as an operator reads it: 17:00 today, else with the day."""
    return f"{at:%H:%M}" if at.date() == now.astimezone(at.tzinfo).date() else f"{at:%a %d %b %H:%M}"


def held(spec: RolloutSpec, slug: str, cal: SiteCalendar, now: datetime) -> str | None:
    """Why no update may start on this site at `now` (None: one may)."""
    why = [] if open_now(spec, slug, now) else ["outside its maintenance windows"]
    if spec.avoid_occupied and isinstance(cal, str):
        why.append(cal)
    elif spec.avoid_occupied and cal is not None:
        until = cal.occupied_until(now)
        if until is not None:
            why.append(f"occupied until {_local(until, now)} ({cal.tz})")
    return f"site {slug} " + " and ".join(why) if why else None


def in_flight(session: Session) -> Counter:
    """Devices updating now, per site id, over every running or paused rollout (the site cap)."""
    return Counter(
        dict(
            session.exec(
                select(RolloutTarget.site_id, func.count())
                .join(Rollout, Rollout.id == RolloutTarget.rollout_id)
                .where(RolloutTarget.state == IN_FLIGHT, col(Rollout.status).in_(ACTIVE))
                .group_by(RolloutTarget.site_id)
            ).all()
        )
    )


def waiting(session: Session, rollout: Rollout, targets: list[RolloutTarget], now: datetime) -> list[str]:
    """Why the current wave's pending devices are not updating yet, one line per site."""
    if rollout.status != RolloutStatus.running:
        return []
    pending = Counter(t.site_id for t in targets if t.wave == rollout.wave and t.state == "pending")
    if not pending:
        return []
    spec = RolloutSpec.model_validate(rollout.spec)
    sites, busy = site_calendars(session), in_flight(session)
    out = []
    for site_id, n in sorted(pending.items(), key=lambda kv: sites.get(kv[0], ("",))[0]):
        slug, cal = sites.get(site_id, ("?", None))
        why = held(spec, slug, cal, now)
        if why is None and busy[site_id] >= spec.site_cap:
            why = f"site {slug} at its cap of {spec.site_cap} updates at once"
        if why is not None:
            out.append(f"{why}: {n} devices waiting")
    return out


def continuity(
    session: Session, targets: list[RolloutTarget], now: datetime, factor: float
) -> dict[str, list[str]]:
    """Per updated device, the channels it published before and does not publish now (none: passed)."""
    problems: dict[str, list[str]] = {}
    for t in targets:
        if t.state != "confirmed" or not t.channels:
            continue
        now_ch = {c.name: c for c in session.exec(select(Channel).where(Channel.device_id == t.device_id))}
        for name, cadence in sorted(t.channels.items()):
            c = now_ch.get(name)
            since = t.finished_at or t.offered_at
            if c is None or (since is not None and c.last_at <= since):
                problems.setdefault(t.device_id, []).append(f"{name}: nothing since the update")
            elif cadence and (now - c.last_at).total_seconds() > factor * cadence + GATE_SLACK_S:
                silent = (now - c.last_at).total_seconds()
                problems.setdefault(t.device_id, []).append(
                    f"{name}: silent {silent:.0f} s (every {cadence:g} s)"
                )
    return problems


class Step:
    """One pass of the engine over one rollout, in one session, at one instant."""

    def __init__(self, session, rollout, publish, base_url, now, rng) -> None:
        self.session, self.rollout, self.publish, self.base_url = session, rollout, publish, base_url
        self.now, self.rng = now, rng
        self.spec = RolloutSpec.model_validate(rollout.spec)
        self.release = session.get(Release, rollout.release_id)
        self.targets = list(session.exec(select(RolloutTarget).where(RolloutTarget.rollout_id == rollout.id)))
        self.waves = list(
            session.exec(
                select(RolloutWave).where(RolloutWave.rollout_id == rollout.id).order_by(RolloutWave.index)
            )
        )

    def wave_targets(self, index: int) -> list[RolloutTarget]:
        return [t for t in self.targets if t.wave == index]

    def run(self) -> None:
        while self.rollout.status == RolloutStatus.running:
            wave = self.waves[self.rollout.wave]
            if wave.status == "pending":
                wave.status, wave.started_at = "running", self.now
                for t in self.wave_targets(wave.index):
                    t.not_before = self.now + timedelta(seconds=self.rng.uniform(0, self.spec.start_jitter_s))
            if not self.advance(wave):
                return

    def advance(self, wave: RolloutWave) -> bool:
        """Move the wave on; True when it passed and the next one may start in this same pass."""
        mine = self.wave_targets(wave.index)
        for t in mine:
            if (
                t.state == IN_FLIGHT
                and t.offered_at
                and (self.now - t.offered_at).total_seconds() > self.spec.timeout_s
            ):
                t.state, t.finished_at = "timed_out", self.now
                t.reason = f"no outcome within {self.spec.timeout_s:g} s (last: {t.node_state or 'nothing'})"
            if t.state in ("failed", "timed_out") and t.attempt <= self.spec.retries:
                t.state, t.not_before = "pending", self.now  # offered again, with a new attempt number
        bad = [t for t in mine if t.state in BAD]
        if bad and len(bad) / wave.size >= self.spec.failure_threshold:
            why = "; ".join(f"{t.device_id} {t.state}: {t.reason or ''}".strip() for t in bad[:3])
            return self.halt(
                wave,
                f"wave {wave.index}: {len(bad)} of {wave.size} failed (failure threshold "
                f"{self.spec.failure_threshold:g}): {why}",
            )
        if all(t.state in DONE for t in mine):
            return self.judge(wave, mine)
        self.start(mine)
        return False

    def judge(self, wave: RolloutWave, mine: list[RolloutTarget]) -> bool:
        ok = sum(t.state == "confirmed" for t in mine)
        if wave.done_at is None:
            wave.done_at, wave.status = self.now, "gate"
        if ok / wave.size < self.spec.success_threshold:
            return self.halt(
                wave,
                f"wave {wave.index}: {ok} of {wave.size} confirmed, under the success "
                f"threshold {self.spec.success_threshold:g}",
            )
        problems = continuity(self.session, mine, self.now, self.spec.gate_factor)
        wave.gate = {"checked_at": self.now.isoformat(), "problems": problems}
        if problems:
            if (self.now - wave.done_at).total_seconds() >= self.spec.gate_s:
                dev, what = next(iter(problems.items()))
                return self.halt(
                    wave,
                    f"wave {wave.index}: data continuity: {dev} {what[0]}"
                    + (f" (and {len(problems) - 1} more devices)" if len(problems) > 1 else ""),
                )
            return False
        wave.status, wave.finished_at = "passed", self.now
        if wave.index + 1 < len(self.waves):
            self.rollout.wave += 1
            return True
        self.rollout.status, self.rollout.finished_at = RolloutStatus.completed, self.now
        return False

    def start(self, mine: list[RolloutTarget]) -> None:
        ready = sorted(
            (t for t in mine if t.state == "pending"), key=lambda t: (t.not_before or self.now, t.id)
        )
        if not ready:
            return
        busy, sites = in_flight(self.session), site_calendars(self.session)
        closed = {
            site_id: held(self.spec, *sites.get(site_id, ("", None)), self.now) is not None
            for site_id in {t.site_id for t in ready}
        }
        for t in ready:
            if (t.not_before and t.not_before > self.now) or busy[t.site_id] >= self.spec.site_cap:
                continue
            if closed[t.site_id]:
                continue
            if self.offer(t):
                busy[t.site_id] += 1

    def offer(self, t: RolloutTarget) -> bool:
        payload = _offer_payload(self.release, self.base_url, t.attempt)
        try:
            self.publish(contract.topic_of(t.device_id, "ota"), payload, retain=True)
        except control.PublishError as e:
            log.warning("rollout %s: offer to %s not sent: %s", self.rollout.id, t.device_id, e)
            return False
        if t.attempt == 0:
            t.channels = _channels_of(self.session, t.device_id)
        t.attempt += 1
        t.state, t.offered_at, t.finished_at = IN_FLIGHT, self.now, None
        t.node_state, t.progress = None, None
        return True

    def halt(self, wave: RolloutWave, reason: str) -> bool:
        wave.status, wave.finished_at = "failed", self.now
        stop(self.session, self.rollout, self.targets, self.publish, RolloutStatus.halted, reason, self.now)
        log.warning("rollout %s halted: %s", self.rollout.id, reason)
        return False


def stop(session, rollout, targets, publish, status: RolloutStatus, reason: str, now: datetime) -> None:
    """Halt or abort: no more offers; the devices not done get their retained offer withdrawn, and
    the waves not finished say so (the one under way takes the rollout's status, the later ones are
    cancelled)."""
    rollout.status, rollout.reason, rollout.finished_at = status, reason[:256], now
    for wave in session.exec(select(RolloutWave).where(RolloutWave.rollout_id == rollout.id)):
        if wave.status in ("pending", "running", "gate"):
            wave.status = "cancelled" if wave.status == "pending" else str(status)
            wave.finished_at = now
    for t in targets:
        if t.state == "pending":
            t.state, t.reason = "cancelled", f"rollout {status}"
        if t.attempt and t.state != "confirmed":
            try:
                publish(contract.topic_of(t.device_id, "ota"), "", retain=True)
            except control.PublishError as e:
                log.warning("rollout %s: could not withdraw the offer to %s: %s", rollout.id, t.device_id, e)
        if t.state == IN_FLIGHT:
            t.state, t.finished_at, t.reason = "cancelled", now, f"rollout {status}"


def step(session: Session, publish: Publish, base_url: str, now: datetime, rng: random.Random) -> None:
    """One pass over every running rollout; commits."""
    for rollout in session.exec(
        select(Rollout).where(Rollout.status == RolloutStatus.running).order_by(Rollout.id)
    ):
        Step(session, rollout, publish, base_url, now, rng).run()
        session.flush()
    session.commit()


# --- operator actions ------------------------------------------------------------------------------
# What an operator may do to a rollout, by the statuses that allow it.
ACTIONS = {
    "pause": (RolloutStatus.running,),
    "resume": (RolloutStatus.paused,),
    "abort": (RolloutStatus.running, RolloutStatus.paused, RolloutStatus.halted),
}


def actions_for(status: str) -> tuple[str, ...]:
    return tuple(name for name, statuses in ACTIONS.items() if status in statuses)


def change(
    session: Session, rollout: Rollout, action: str, who: str, publish: Publish | None, now: datetime
) -> Rollout:
    """pause, resume or abort; audited; commits."""
    before = audit.snapshot(rollout)
    if rollout.status not in ACTIONS[action]:
        raise RolloutError(f"rollout {rollout.id} is {rollout.status}: cannot {action} it")
    if action == "pause":
        rollout.status = RolloutStatus.paused
    elif action == "resume":
        rollout.status = RolloutStatus.running
    else:
        if publish is None:
            raise RuntimeError("aborting needs a broker connection to withdraw the offers")
        targets = list(session.exec(select(RolloutTarget).where(RolloutTarget.rollout_id == rollout.id)))
        stop(session, rollout, targets, publish, RolloutStatus.aborted, f"aborted by {who}", now)
    session.flush()
    audit.record(session, who, action, "rollout", rollout.id, before, audit.snapshot(rollout))
    session.commit()
    session.refresh(rollout)
    return rollout


def describe(session: Session, rollout: Rollout, now: datetime | None = None) -> RolloutOut:
    """The rollout as the API shows it; `waiting` is judged at `now` (default: the time now)."""
    rel = session.get(Release, rollout.release_id)
    targets = list(
        session.exec(
            select(RolloutTarget)
            .where(RolloutTarget.rollout_id == rollout.id)
            .order_by(RolloutTarget.wave, RolloutTarget.device_id)
        )
    )
    waves = session.exec(
        select(RolloutWave).where(RolloutWave.rollout_id == rollout.id).order_by(RolloutWave.index)
    )
    return RolloutOut(
        id=rollout.id,
        name=rollout.name,
        release=rel.version,
        arch=rel.arch,
        status=rollout.status,
        reason=rollout.reason,
        wave=rollout.wave,
        created_at=rollout.created_at,
        created_by=rollout.created_by,
        finished_at=rollout.finished_at,
        counts=dict(Counter(t.state for t in targets)),
        waiting=waiting(session, rollout, targets, now or utcnow()),
        waves=[
            WaveOut(
                index=w.index,
                size=w.size,
                status=w.status,
                counts=dict(Counter(t.state for t in targets if t.wave == w.index)),
                gate=w.gate,
            )
            for w in waves
        ],
        targets=[
            TargetOut(
                device=t.device_id,
                wave=t.wave,
                state=t.state,
                node_state=t.node_state,
                progress=t.progress,
                attempt=t.attempt,
                from_version=t.from_version,
                running=t.running,
                reason=t.reason,
            )
            for t in targets
        ],
    )


def rollout_sites(session: Session, rollout: Rollout) -> set[int]:
    return set(
        session.exec(select(RolloutTarget.site_id).where(RolloutTarget.rollout_id == rollout.id)).all()
    )


# --- running it -----------------------------------------------------------------------------------
class RolloutEngine:
    """Runs `step` every `interval_s`, and soon after any `ota/status` arrives (see OtaStatusListener)."""

    def __init__(
        self,
        engine: Engine,
        publish: Publish,
        base_url: str,
        interval_s: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self.engine, self.publish, self.base_url = engine, publish, base_url
        self.interval_s, self.clock, self.rng = interval_s, clock, rng or random.Random()
        self.ticks = 0
        self.nudged: asyncio.Event | None = None

    def tick(self) -> None:
        with Session(self.engine) as session:
            step(session, self.publish, self.base_url, self.clock(), self.rng)
        self.ticks += 1

    def nudge(self) -> None:
        if self.nudged is not None:
            self.nudged.set()

    async def run(self, stop: asyncio.Event) -> None:
        self.nudged = asyncio.Event()
        while not stop.is_set():
            self.nudged.clear()
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # a failed pass (database away) must not end the service
                log.exception("rollout evaluation failed")
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.nudged.wait())]
            await asyncio.wait(waits, timeout=self.interval_s, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if self.nudged.is_set():
                await asyncio.sleep(0.2)  # let a burst of statuses land before looking


def store_ota_status(session: Session, topic: str, payload: bytes, at: datetime) -> bool:
    """Decode and apply one ota/status message; a refused one goes to the rejects list. Commits."""
    msg = contract.parse_ota_status(topic, payload)
    device = None if isinstance(msg, contract.Reject) else session.get(Device, msg.device_id)
    if not isinstance(msg, contract.Reject) and device is None:
        msg = contract.Reject(
            contract.RejectReason.unknown_device,
            f"device {msg.device_id!r} is not registered",
            topic,
            payload,
        )
    if isinstance(msg, contract.Reject):
        session.add(Reject(reason=str(msg.reason), topic=topic[:256], detail=msg.detail, payload=msg.excerpt))
        session.commit()
        return False
    device.last_seen = at
    apply_ota_status(session, device, msg, at)
    session.commit()
    return True


class OtaStatusListener:
    """The fleet's subscription to every node's `ota/status` (persistent session, QoS 1), feeding
    `store_ota_status` and nudging the engine. Ingest can take this over with `apply_ota_status`."""

    def __init__(
        self,
        engine: Engine,
        mqtt_url: str,
        client_id: str,
        on_status: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        reconnect_interval: float = 1.0,
    ) -> None:
        self.engine, self.mqtt_url, self.client_id = engine, mqtt_url, client_id
        self.target = parse_mqtt_url(mqtt_url)
        self.on_status, self.clock, self.reconnect_interval = on_status, clock, reconnect_interval
        self.received = 0
        self.subscribed = asyncio.Event()

    def _store(self, topic: str, payload: bytes, at: datetime) -> None:
        with Session(self.engine) as session:
            store_ota_status(session, topic, payload, at)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with fleet_client(self.target, self.client_id) as client:
                    await client.subscribe(contract.topic_of("+", contract.OTA_STATUS), qos=1)
                    self.subscribed.set()
                    await self._pump(client, stop)
            except aiomqtt.MqttError as e:
                log.warning("ota/status MQTT %s: %s; reconnecting", mask_url(self.mqtt_url), e)
            finally:
                self.subscribed.clear()
            try:
                await asyncio.wait_for(stop.wait(), self.reconnect_interval)
            except TimeoutError:
                pass

    async def _pump(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        messages = aiter(client.messages)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                incoming = asyncio.ensure_future(anext(messages))
                await asyncio.wait((incoming, stopping), return_when=asyncio.FIRST_COMPLETED)
                if not incoming.done():
                    incoming.cancel()
                    return
                message = incoming.result()
                payload = (
                    message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                )
                self.received += 1
                try:
                    await asyncio.to_thread(self._store, message.topic.value, payload, self.clock())
                except Exception:
                    log.exception("ota/status from %s not stored", message.topic.value)
                if self.on_status:
                    self.on_status()
        finally:
            stopping.cancel()
