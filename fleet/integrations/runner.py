"""Runs the integrations beside ingest, on the fleet's own MQTT account: the republisher (fed by the
hub after each commit) and, from the registry read every `interval_s`, availability and Home
Assistant discovery. A database outage leaves the last registry view in use; MQTT reconnects by
itself (paho), and what could not be sent is counted."""

from __future__ import annotations

import asyncio
import logging
import math

import paho.mqtt.client as mqtt
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from fleet.control import Publisher
from fleet.integrations import snapshot
from fleet.integrations.config import IntegrationSettings
from fleet.integrations.hass import Discovery
from fleet.integrations.sitetopics import Republisher
from fleet.settings import Settings
from fleet.stream import Event, Hub

log = logging.getLogger("maille.integrations")
MIN_REREAD_S = 1.0  # a new device or channel re-reads the registry at most this often


class Integrations:
    def __init__(self, engine: Engine, mqtt_url: str, client_id: str, settings: IntegrationSettings):
        self.engine = engine
        self.mqtt_url = mqtt_url
        self.client_id = client_id
        self.settings = settings
        self.republisher = Republisher(self._publish)
        self.discovery = Discovery(settings.discovery_prefix, self._publish) if settings.hass else None
        self.devices: dict[str, snapshot.DeviceView] = {}
        self.unsent = 0  # publishes paho could not send at once (not connected to the broker)
        self._client: mqtt.Client | None = None
        self._wake = asyncio.Event()

    def feed(self, events: list[Event]) -> None:
        """The hub's consumer (on the event loop, after each ingest commit)."""
        self.republisher.feed(events)
        self._wake.set()

    def _publish(self, topic: str, payload: bytes) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.unsent += 1

    def samples(self) -> list[tuple[str, str, str, float]]:
        """Prometheus families (name, kind, help, value) for /metrics."""
        return [
            (
                "maille_sitetopics_published_total",
                "counter",
                "Readings republished on site topics (device and room topics).",
                self.republisher.published,
            ),
            (
                "maille_sitetopics_unplaced_total",
                "counter",
                "Readings not republished: their device is not in service.",
                self.republisher.unplaced,
            ),
            (
                "maille_integrations_unsent_total",
                "counter",
                "Site-topic and discovery messages not sent at once (not connected to the broker).",
                self.unsent,
            ),
            (
                "maille_hass_documents",
                "gauge",
                "Home Assistant discovery documents published.",
                len(self.discovery.sent) if self.discovery else 0,
            ),
        ]

    def _read_registry(self) -> dict[str, snapshot.DeviceView]:
        with Session(self.engine) as session:
            return snapshot.load(session)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        publisher = Publisher(self.mqtt_url, self.client_id)
        self._client = client = publisher.client
        if self.discovery:
            topic = self.discovery.subscription
            client.on_connect = lambda c, *_: c.subscribe(topic, 1)
            client.on_message = lambda c, u, m: loop.call_soon_threadsafe(
                self.discovery.on_message, m.topic, m.payload
            )
            if client.is_connected():  # connected before the callback was set
                client.subscribe(topic, 1)
        try:
            while not client.is_connected() and not stop.is_set():
                await asyncio.sleep(0.05)
            await self._loop(stop, loop)
        finally:
            publisher.close()

    async def _loop(self, stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
        next_read, last_read = 0.0, -math.inf
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._wake.clear()
                stale = self.republisher.flush(self.devices, final=False)
                now = loop.time()
                if now >= next_read or (stale and now - last_read >= MIN_REREAD_S):
                    await self._refresh()
                    last_read = loop.time()
                    next_read = last_read + self.settings.interval_s
                    stale = False
                wake_at = next_read if not stale else min(next_read, last_read + MIN_REREAD_S)
                woken = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(
                    [stopping, woken], timeout=max(0.0, wake_at - loop.time()), return_when="FIRST_COMPLETED"
                )
                woken.cancel()
        finally:
            stopping.cancel()

    async def _refresh(self) -> None:
        try:
            self.devices = await asyncio.to_thread(self._read_registry)
        except SQLAlchemyError as e:
            log.warning("integrations: registry unreadable (%s); keeping the last view", type(e).__name__)
            return
        self.republisher.flush(self.devices, final=True)
        self.republisher.sync_availability(self.devices)
        if self.discovery:
            self.discovery.sync(self.devices)


def attach(settings: Settings, engine: Engine, hub: Hub) -> Integrations | None:
    """The integrations of a fleet service, fed by its hub; None when switched off."""
    if not settings.integrations.enabled:
        return None
    runner = Integrations(
        engine, settings.mqtt_url, f"{settings.ingest_client_id}-integrations", settings.integrations
    )
    hub.consumers.append(runner.feed)
    return runner
