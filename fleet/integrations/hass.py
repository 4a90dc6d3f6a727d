"""Home Assistant MQTT discovery: one retained sensor document per channel of every device in service.

Topic `<prefix>/sensor/<site>/<device>_<metric>/config` (the site slug as HA's node_id, so a token's
broker account can be given one site's documents). Each document points HA at the channel's own site
topic (`…/<room>/<metric>/<device>`, JSON, `value_template`) and at the device's availability topic.
Documents are published when they change (a new channel, a room, a firmware version), and cleared
(empty retained) when their device is retired or deleted, also for documents a previous run left on
the broker. Device classes, units and state classes follow Home Assistant's sensor documentation
(homeassistant/components/sensor/const.py: DEVICE_CLASS_UNITS, DEVICE_CLASS_STATE_CLASSES).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import fleet
from fleet.integrations.snapshot import DeviceView
from fleet.integrations.topics import OFFLINE, ONLINE

log = logging.getLogger("maille.hass")

UNIQUE_PREFIX = "maille_"
MANUFACTURER = "Maille"


@dataclass(frozen=True)
class Kind:
    """How Home Assistant should see one metric."""

    label: str
    device_class: str | None
    unit: str | None  # Home Assistant's spelling
    state_class: str | None = "measurement"


def _energy(label: str) -> Kind:
    return Kind(label, "energy", "Wh", "total_increasing")


# Our metrics (docs/contract.md) → Home Assistant. The unit is one HA allows for the device class.
# energy_delta is energy over one report window: neither a total nor a measurement in HA's sense, so it
# has no state class (no long-term statistics). Counts have no device class and no unit.
METRICS: dict[str, Kind] = {
    "temperature": Kind("Temperature", "temperature", "°C"),
    "humidity": Kind("Humidity", "humidity", "%"),
    "pressure": Kind("Pressure", "atmospheric_pressure", "Pa"),
    "co2": Kind("CO2", "carbon_dioxide", "ppm"),
    "noise_laeq": Kind("Noise LAeq", "sound_pressure", "dBA"),
    "noise_lamax": Kind("Noise LAmax", "sound_pressure", "dBA"),
    "energy": _energy("Energy"),
    "energy_s0": _energy("Energy (S0)"),
    "energy_delta": Kind("Energy since last report", "energy", "Wh", None),
    "power": Kind("Power", "power", "W"),
    "power_s0": Kind("Power (S0)", "power", "W"),
    "voltage": Kind("Voltage", "voltage", "V"),
    "current": Kind("Current", "current", "A"),
    **{f"voltage_l{i}": Kind(f"Voltage L{i}", "voltage", "V") for i in (1, 2, 3)},
    **{f"current_l{i}": Kind(f"Current L{i}", "current", "A") for i in (1, 2, 3)},
    "people_in": Kind("People in", None, None),
    "people_out": Kind("People out", None, None),
    "door_open": Kind("Door openings", None, None),
    "occupancy": Kind("Occupancy", None, None),
}
# A metric we do not know yet still appears: no device class, its SenML unit in HA's spelling.
SENML_UNITS = {"Cel": "°C", "%RH": "%", "count": None}


def kind_of(metric: str, senml_unit: str | None) -> Kind:
    """The metric's kind; `<name>_min` / `<name>_max` (window extremes) are kinds of `<name>`."""
    if metric in METRICS:
        return METRICS[metric]
    base, _, extreme = metric.rpartition("_")
    if extreme in ("min", "max") and base in METRICS:
        k = METRICS[base]
        return Kind(f"{k.label} {extreme}", k.device_class, k.unit, "measurement")
    unit = SENML_UNITS.get(senml_unit, senml_unit) if senml_unit else None
    return Kind(metric.replace("_", " ").capitalize(), None, unit)


def config_topic(prefix: str, site: str, device_id: str, metric: str) -> str:
    return f"{prefix}/sensor/{site}/{device_id}_{metric}/config"


def document(device: DeviceView, metric: str, senml_unit: str | None) -> dict:
    """The discovery document of one channel (full key names, as HA documents them)."""
    kind = kind_of(metric, senml_unit)
    p = device.placement
    doc = {
        "name": kind.label,
        "unique_id": f"{UNIQUE_PREFIX}{device.id}_{metric}",
        "state_topic": p.device_topic(metric, device.id),
        "value_template": "{{ value_json.value }}",
        "json_attributes_topic": p.device_topic(metric, device.id),  # ts and device as attributes
        "availability": [
            {
                "topic": p.availability_topic(device.id),
                "payload_available": ONLINE,
                "payload_not_available": OFFLINE,
            }
        ],
        "qos": 1,
        "device": {
            "identifiers": [f"{UNIQUE_PREFIX}{device.id}"],
            "name": device.name or device.id,
            "manufacturer": MANUFACTURER,
            "model": device.board,
            **({"sw_version": device.fw} if device.fw else {}),
            **({"suggested_area": device.room_name} if device.room_name else {}),
        },
        "origin": {"name": "Maille fleet", "sw_version": fleet.__version__},
    }
    if kind.device_class:
        doc["device_class"] = kind.device_class
    if kind.unit:
        doc["unit_of_measurement"] = kind.unit
    if kind.state_class:
        doc["state_class"] = kind.state_class
    return doc


def documents(prefix: str, devices: Mapping[str, DeviceView]) -> dict[str, bytes]:
    """Topic → payload for every channel of every device in service."""
    return {
        config_topic(prefix, d.placement.site, d.id, metric): json.dumps(
            document(d, metric, unit), ensure_ascii=False, sort_keys=True
        ).encode()
        for d in devices.values()
        for metric, unit in sorted(d.channels.items())
    }


def _ours(payload: bytes) -> dict | None:
    """A document this fleet published (its unique_id says so), else None."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    ok = isinstance(doc, dict) and str(doc.get("unique_id", "")).startswith(UNIQUE_PREFIX)
    return doc if ok else None


class Discovery:
    """Keeps the broker's retained discovery documents equal to what the registry says.

    `seen` mirrors the retained documents on the broker (fed by a subscription to the prefix, from
    the MQTT client's thread), so documents left by an earlier run for devices since retired are
    found and cleared too."""

    def __init__(self, prefix: str, publish: Callable[[str, bytes], None]):
        self.prefix = prefix
        self.publish = publish
        self.seen: dict[str, bytes] = {}
        self.sent: dict[str, bytes] = {}

    @property
    def subscription(self) -> str:
        return f"{self.prefix}/sensor/+/+/config"

    def on_message(self, topic: str, payload: bytes) -> None:
        if payload:
            self.seen[topic] = payload
        else:
            self.seen.pop(topic, None)

    def sync(self, devices: Mapping[str, DeviceView]) -> int:
        """Publish new and changed documents, clear stale ones; returns how many messages went out."""
        wanted = documents(self.prefix, devices)
        out = 0
        for topic, payload in wanted.items():
            before = self.sent.get(topic) or self.seen.get(topic)
            self.sent[topic] = payload
            if before == payload:
                continue  # e.g. left by the previous run, unchanged
            old = _ours(before) if before else None
            new_state = json.loads(payload)["state_topic"]
            if old and old.get("state_topic") != new_state:  # the device moved: its old value goes
                self.publish(old["state_topic"], b"")
            self.publish(topic, payload)
            out += 1
        for topic in (set(self.seen) | set(self.sent)) - set(wanted):
            payload = self.sent.pop(topic, None) or self.seen.get(topic)
            self.seen.pop(topic, None)
            doc = _ours(payload) if payload else None
            if doc is None:
                continue  # someone else's document: not ours to remove
            self.publish(topic, b"")
            self.publish(doc["state_topic"], b"")
            out += 2
            if doc["device"]["identifiers"][0].removeprefix(UNIQUE_PREFIX) not in devices:
                for availability in doc["availability"]:  # the device is gone: so is its presence
                    self.publish(availability["topic"], b"")
                    out += 1
        return out
