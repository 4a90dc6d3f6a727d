"""The republisher: newly stored readings → retained site topics, and presence → availability topics.

Ingest hands it each committed batch (through the live-stream hub); it only remembers the newest
reading per device channel, and the runner publishes them in bursts, so a burst of a thousand
readings of one channel costs one message per topic. Two devices of one room measuring the same
metric: each has its own `…/<room>/<metric>/<device>` topic, and the room's `…/<room>/<metric>`
carries whichever reading is newest by the nodes' time (a backlog flushed late by one node never
overwrites a fresher value of the other).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime

from fleet.integrations.snapshot import DeviceView
from fleet.integrations.topics import OFFLINE, ONLINE
from fleet.stream import Event


class Republisher:
    def __init__(self, publish: Callable[[str, bytes], None]):
        self.publish = publish
        self.pending: dict[tuple[str, str], dict] = {}  # (device, metric) → newest event data
        self.room_newest: dict[str, datetime] = {}  # room topic → time of the reading it holds
        self.availability: dict[str, tuple[str, str]] = {}  # device → (topic, state) published
        self.published = 0
        self.unplaced = 0  # readings of devices no longer in service (retired since), not republished

    def feed(self, events: list[Event]) -> None:
        """The hub's consumer: runs on the event loop, after each commit; cheap by design."""
        for event in events:
            data = event.data
            key = (event.device_id, data["name"])
            held = self.pending.get(key)
            if held is None or held["ts"] <= data["ts"]:  # ISO 8601 UTC of one formatter: ordered
                self.pending[key] = data

    def flush(self, devices: Mapping[str, DeviceView], *, final: bool) -> bool:
        """Publish what is pending. Returns True when the registry should be read again: a reading of
        a device or channel `devices` does not know yet, or of a device it holds for offline. Readings
        of unknown devices wait for that read unless `final` (the read was just made: the device is
        not in service, they are dropped and counted)."""
        stale = False
        waiting: dict[tuple[str, str], dict] = {}
        for key, data in self.pending.items():
            device = devices.get(key[0])
            if device is None:
                if final:
                    self.unplaced += 1
                else:
                    waiting[key] = data
                stale = True
                continue
            if key[1] not in device.channels or not device.available:
                stale = True  # a new channel (its discovery document is due), or a node back online
            self._publish_value(device, data)
        self.pending = waiting
        return stale

    def _publish_value(self, device: DeviceView, data: dict) -> None:
        metric = data["name"]
        body = json.dumps(
            {"value": data["value"], "unit": data["unit"], "ts": data["ts"], "device": device.id}
        ).encode()
        self.publish(device.placement.device_topic(metric, device.id), body)
        self.published += 1
        room_topic = device.placement.room_topic(metric)
        if room_topic is None:
            return
        ts = datetime.fromisoformat(data["ts"])
        newest = self.room_newest.get(room_topic)
        if newest is None or ts >= newest:
            self.room_newest[room_topic] = ts
            self.publish(room_topic, body)
            self.published += 1

    def sync_availability(self, devices: Mapping[str, DeviceView]) -> None:
        """`online` / `offline` per device when it changed; cleared for devices no longer in service."""
        for device in devices.values():
            state = (device.placement.availability_topic(device.id), ONLINE if device.available else OFFLINE)
            if self.availability.get(device.id) != state:
                old = self.availability.get(device.id)
                if old and old[0] != state[0]:
                    self.publish(old[0], b"")  # moved to another site
                self.publish(state[0], state[1].encode())
                self.availability[device.id] = state
        for device_id in set(self.availability) - set(devices):
            self.publish(self.availability.pop(device_id)[0], b"")
