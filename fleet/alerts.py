"""Alerts: rules evaluated on a clock, alerts that open and resolve themselves, and webhooks.

Each tick computes the set of conditions that hold now, opens an alert for each new one and resolves
the open alerts whose condition is gone. Opened and resolved alerts are POSTed to every configured
webhook, with retries and exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from fleet import health, presence
from fleet.models import Alert, Channel, Device, DeviceConfig, DeviceStatus, Lifecycle, Rollup, utcnow
from fleet.rollups import bucket_of

log = logging.getLogger("maille.alerts")

Key = tuple[str, str, str]  # rule, device, subject


class Threshold(BaseModel):
    """`metric` above (or below) a value for `for_s` seconds, judged on 1-minute rollups."""

    metric: str = Field(pattern=r"^[a-z0-9_]{1,32}$")
    above: float | None = None
    below: float | None = None
    for_s: float = Field(600, ge=60)

    @model_validator(mode="after")
    def _one_bound(self) -> Threshold:
        if (self.above is None) == (self.below is None):
            raise ValueError("a threshold needs exactly one of above, below")
        return self

    def breached_by(self, bucket: Rollup) -> bool:
        return bucket.min > self.above if self.above is not None else bucket.max < self.below

    @property
    def label(self) -> str:
        bound = f"> {self.above:g}" if self.above is not None else f"< {self.below:g}"
        return f"{self.metric} {bound} for {self.for_s:g} s"


class AlertRules(BaseModel):
    offline_after_s: float = 300.0
    stale_factor: float = 3.0  # a channel is stale after this many expected intervals without data
    stale_min_s: float = 60.0
    low_heap_bytes: int = 16384
    reboot_loop_boots: int = 5  # boots within PresenceRules.reboot_window_s
    thresholds: list[Threshold] = Field(
        default_factory=lambda: [Threshold(metric="co2", above=1500, for_s=600)]
    )


@dataclass(frozen=True)
class AlertEvent:
    event: str  # opened, resolved
    alert: dict

    def body(self) -> dict:
        return {"event": self.event, "alert": self.alert}


def firing(session: Session, now: datetime, rules: AlertRules) -> dict[Key, str]:
    """Every condition that holds now, with its message."""
    out: dict[Key, str] = {}
    devices = session.exec(select(Device).where(Device.lifecycle != Lifecycle.retired)).all()
    online = {d.id: d for d in devices if d.status == DeviceStatus.online}
    for d in devices:
        if d.status == DeviceStatus.offline and d.last_state_at is not None:
            away = (now - d.last_state_at).total_seconds()
            if away >= rules.offline_after_s:
                out[("device_offline", d.id, "")] = f"offline for {away:.0f} s"
    for d in online.values():
        health = d.last_health or {}
        if health.get("faults"):
            out[("sensor_fault", d.id, "")] = "faults: " + ", ".join(health["faults"])[:200]
        if health.get("heap_free") is not None and health["heap_free"] < rules.low_heap_bytes:
            out[("low_heap", d.id, "")] = f"free heap {health['heap_free']} B < {rules.low_heap_bytes} B"
        if d.mode == "safe":
            out[("reboot_loop", d.id, "")] = "in safe mode after repeated crashes"
        elif (
            d.boot is not None
            and d.boots_base is not None
            and d.boot - d.boots_base >= rules.reboot_loop_boots
        ):
            out[("reboot_loop", d.id, "")] = f"{d.boot - d.boots_base} boots since {d.boots_since:%H:%M:%S}"
    out.update(_stale(session, now, rules, online))
    for threshold in rules.thresholds:
        out.update(_threshold(session, now, threshold, online))
    return out


def _stale(session: Session, now: datetime, rules: AlertRules, online: dict[str, Device]) -> dict[Key, str]:
    """Channels of online devices silent for longer than stale_factor × their cadence (declared by
    the desired config's sample interval, else learned)."""
    if not online:
        return {}
    declared = {
        c.device_id: c.settings.get("sample_interval_s")
        for c in session.exec(select(DeviceConfig).where(col(DeviceConfig.device_id).in_(online))).all()
    }
    out = {}
    for ch in session.exec(select(Channel).where(col(Channel.device_id).in_(online))).all():
        expected = declared.get(ch.device_id) or ch.interval_s
        if not expected:
            continue
        # A node back from an outage gets a fresh chance: silence counts from its birth at the latest.
        since = max(ch.last_at, online[ch.device_id].last_state_at or ch.last_at)
        silent = (now - since).total_seconds()
        if silent > max(rules.stale_factor * expected, rules.stale_min_s):
            out[("channel_stale", ch.device_id, ch.name)] = (
                f"no {ch.name} for {silent:.0f} s (every {expected:g} s)"
            )
    return out


def _threshold(session: Session, now: datetime, rule: Threshold, online: dict[str, Device]) -> dict[Key, str]:
    start = bucket_of(now - timedelta(seconds=rule.for_s), 60)
    buckets: dict[str, list[Rollup]] = {}
    for b in session.exec(
        select(Rollup).where(
            Rollup.resolution == "1m",
            Rollup.name == rule.metric,
            Rollup.bucket >= start,
            col(Rollup.device_id).in_(online),
        )
    ).all():
        buckets.setdefault(b.device_id, []).append(b)
    return {
        ("threshold", device_id, rule.metric): rule.label
        for device_id, bs in buckets.items()
        if min(b.bucket for b in bs) == start and all(rule.breached_by(b) for b in bs)
    }


def evaluate(session: Session, now: datetime, rules: AlertRules) -> list[AlertEvent]:
    """One tick: open what fires, resolve what stopped; returns the events to notify."""
    presence.wake_overdue(session, now)
    want = firing(session, now, rules)
    opened = {
        (a.rule, a.device_id, a.subject): a
        for a in session.exec(select(Alert).where(col(Alert.resolved_at).is_(None)))
    }
    changed: list[tuple[str, Alert]] = []
    for key in sorted(want.keys() - opened.keys()):
        severity = "critical" if key[0] in ("device_offline", "reboot_loop") else "warning"
        alert = Alert(
            rule=key[0],
            device_id=key[1],
            subject=key[2],
            severity=severity,
            message=want[key][:256],
            opened_at=now,
        )
        session.add(alert)
        changed.append(("opened", alert))
    for key in sorted(opened.keys() - want.keys()):
        opened[key].resolved_at = now
        changed.append(("resolved", opened[key]))
    session.flush()  # ids assigned; the events are taken before the commit expires the objects
    events = [AlertEvent(kind, alert.model_dump(mode="json")) for kind, alert in changed]
    session.commit()
    return events


def list_alerts(
    session: Session, *, open_only: bool, device_ids: list[str] | None, limit: int
) -> list[Alert]:
    query = select(Alert).order_by(col(Alert.id).desc()).limit(limit)
    if open_only:
        query = query.where(col(Alert.resolved_at).is_(None))
    if device_ids is not None:
        query = query.where(col(Alert.device_id).in_(device_ids))
    return list(reversed(session.exec(query).all()))


@dataclass
class Notifier:
    """POSTs alert events to webhooks; one queue per URL, so a dead endpoint delays only itself."""

    urls: list[str]
    retries: int = 5
    backoff_s: float = 1.0
    delivered: int = 0
    failed: int = 0
    queues: dict[str, asyncio.Queue] = field(default_factory=dict)

    def submit(self, events: list[AlertEvent]) -> None:
        for url in self.urls:
            queue = self.queues.setdefault(url, asyncio.Queue())
            for event in events:
                queue.put_nowait(event)

    async def run(self, stop: asyncio.Event) -> None:
        for url in self.urls:
            self.queues.setdefault(url, asyncio.Queue())
        async with httpx.AsyncClient(timeout=5.0) as client:
            workers = [asyncio.create_task(self._deliver(client, url, q)) for url, q in self.queues.items()]
            try:
                await stop.wait()
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)

    async def _deliver(self, client: httpx.AsyncClient, url: str, queue: asyncio.Queue) -> None:
        while True:
            event: AlertEvent = await queue.get()
            for attempt in range(self.retries):
                try:
                    response = await client.post(url, json=event.body())
                    if response.status_code < 300:
                        self.delivered += 1
                        break
                    problem = f"HTTP {response.status_code}"
                except httpx.HTTPError as e:
                    problem = f"{type(e).__name__}: {e}"
                log.warning("webhook %s attempt %d failed: %s", url, attempt + 1, problem)
                await asyncio.sleep(self.backoff_s * 2**attempt)
            else:
                self.failed += 1


class Evaluator:
    """Runs `evaluate` every `interval_s` on its own clock (injectable: tests move time by hand)."""

    def __init__(
        self,
        engine: Engine,
        rules: AlertRules,
        notifier: Notifier,
        interval_s: float = 10.0,
        clock: Callable[[], datetime] = utcnow,
        health_retention: timedelta | None = None,
    ) -> None:
        self.engine, self.rules, self.notifier = engine, rules, notifier
        self.interval_s, self.clock, self.health_retention = interval_s, clock, health_retention
        self.ticks = 0

    def tick(self) -> list[AlertEvent]:
        with Session(self.engine) as session:
            now = self.clock()
            events = evaluate(session, now, self.rules)
            if self.health_retention:  # the health history's housekeeping rides on this pass
                health.prune(session, now, self.health_retention)
        self.ticks += 1
        return events

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                self.notifier.submit(await asyncio.to_thread(self.tick))
            except Exception:  # a failed tick (database away) must not end the service; the next one retries
                log.exception("alert evaluation failed")
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass
