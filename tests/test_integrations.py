"""Integrations, end to end on a real broker and the real fleet service: site topics with the latest
values, and Home Assistant discovery read by a Home Assistant–style consumer (a plain MQTT client
holding each document to Home Assistant's documented sensor schema)."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import httpx
import jsonschema
import pytest
from sqlmodel import Session

from fleet.auth import Role, create_token
from fleet.integrations.config import IntegrationSettings
from fleet.integrations.topics import RoomName, reader_acl, room_segments, segment
from fleet.models import Device
from fleet.registry import register_device
from tests.fleet.conftest import Node, bearer, clear_retained
from tests.helpers import Observer, wait_until

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"
SITE_VALUE = json.loads((SCHEMAS / "site_value.schema.json").read_text())
FAST = IntegrationSettings(interval_s=0.3)

# Home Assistant's sensor documentation (home-assistant.io/integrations/sensor.mqtt, and the units
# and state classes it allows per device class: homeassistant/components/sensor/const.py
# DEVICE_CLASS_UNITS, DEVICE_CLASS_STATE_CLASSES), for the device classes a consumer may meet here.
HA_UNITS = {
    "temperature": {"°C", "°F", "K"},
    "humidity": {"%"},
    "atmospheric_pressure": {"cbar", "bar", "hPa", "mmHg", "inHg", "kPa", "mbar", "Pa", "psi"},
    "carbon_dioxide": {"ppm"},
    "sound_pressure": {"dB", "dBA"},
    "energy": {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal", "Mcal", "Gcal"},
    "power": {"mW", "W", "kW", "MW", "GW", "TW"},
    "voltage": {"V", "mV", "µV", "kV", "MV"},
    "current": {"A", "mA"},
}
HA_STATE_CLASSES = {
    "energy": {"total", "total_increasing"},
    **{c: {"measurement"} for c in HA_UNITS if c != "energy"},
}
HA_SENSOR = {
    "type": "object",
    "required": ["state_topic", "unique_id", "device", "availability"],
    "properties": {
        "name": {"type": ["string", "null"]},
        "unique_id": {"type": "string", "minLength": 1},
        "state_topic": {"type": "string", "pattern": "^[^#+]+$"},
        "json_attributes_topic": {"type": "string", "pattern": "^[^#+]+$"},
        "value_template": {"type": "string"},
        "device_class": {"enum": sorted(HA_UNITS)},
        "unit_of_measurement": {"type": "string"},
        "state_class": {"enum": ["measurement", "total", "total_increasing"]},
        "qos": {"enum": [0, 1, 2]},
        "availability": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["topic"],
                "properties": {
                    "topic": {"type": "string", "pattern": "^[^#+]+$"},
                    "payload_available": {"type": "string"},
                    "payload_not_available": {"type": "string"},
                },
                "additionalProperties": False,
            },
        },
        "device": {
            "type": "object",
            "required": ["identifiers"],
            "properties": {
                "identifiers": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "name": {"type": "string"},
                "manufacturer": {"type": "string"},
                "model": {"type": "string"},
                "sw_version": {"type": "string"},
                "suggested_area": {"type": "string"},
            },
            "additionalProperties": False,
        },
        "origin": {"type": "object", "required": ["name"]},
    },
    "additionalProperties": False,
}
HA_TOPIC = r"^homeassistant/sensor/(?:[a-zA-Z0-9_-]+/)?[a-zA-Z0-9_-]+/config$"

# What Home Assistant must show for each metric of docs/contract.md: (device class, unit).
EXPECTED = {
    "temperature": ("temperature", "°C", "Cel", 21.5),
    "humidity": ("humidity", "%", "%RH", 48.0),
    "pressure": ("atmospheric_pressure", "Pa", "Pa", 101325.0),
    "co2": ("carbon_dioxide", "ppm", "ppm", 820.0),
    "co2_max": ("carbon_dioxide", "ppm", "ppm", 905.0),
    "noise_laeq": ("sound_pressure", "dBA", "dB", 52.5),
    "noise_lamax": ("sound_pressure", "dBA", "dB", 71.0),
    "energy": ("energy", "Wh", "Wh", 123456.0),
    "energy_delta": ("energy", "Wh", "Wh", 12.0),
    "power": ("power", "W", "W", 640.0),
    "voltage_l1": ("voltage", "V", "V", 231.0),
    "current_l1": ("current", "A", "A", 2.5),
    "people_in": (None, None, "count", 3.0),
    "occupancy": (None, None, "count", 17.0),
}


def test_topic_segments_hold_no_wildcards_and_stay_unique_in_a_site():
    assert segment("Salle 2.14") == "salle-2-14"
    assert segment("Réfectoire / cantine #2 +") == "refectoire-cantine-2"
    assert segment("_$SYS") == "sys"
    rooms = [
        RoomName(1, "s", "a", "1", "Bureau"),
        RoomName(2, "s", "b", "1", "Bureau"),
        RoomName(3, "s", "a", "1", "2.14"),
        RoomName(4, "t", "a", "0", "Bureau"),
        RoomName(5, "s", "a", "2", "+++"),
    ]
    assert room_segments(rooms) == {1: "a-1-bureau", 2: "b-1-bureau", 3: "2-14", 4: "bureau", 5: "room-5"}


def test_a_token_account_reads_its_sites_and_metrics_only():
    assert reader_acl(["ecole"], None, "homeassistant") == [
        "maille/sites/ecole/#",
        "homeassistant/sensor/ecole/#",
    ]
    assert reader_acl(["ecole"], ["co2"], "ha") == [
        "maille/sites/ecole/+/co2",
        "maille/sites/ecole/+/co2/+",
        "maille/sites/ecole/_devices/availability/+",
    ]
    assert reader_acl(None, None, "homeassistant") == ["maille/sites/+/#", "homeassistant/sensor/+/#"]


def _telemetry(node: Node, seq: int, bt: float, values: dict[str, tuple[str, float]]) -> None:
    node.send(
        "telemetry", {"seq": seq, "bt": bt, "e": [{"n": n, "u": u, "v": v} for n, (u, v) in values.items()]}
    )


def _retained(observer: Observer, topic: str, timeout: float = 10) -> dict:
    _, payload, _ = observer.wait(lambda t, p: t == topic and bool(p), timeout)
    return json.loads(payload)


def _latest(observer: Observer, topic: str) -> bytes | None:
    """The last payload seen on `topic` (after draining what arrived)."""
    try:
        observer.wait(lambda t, p: False, 0.05)
    except TimeoutError:
        pass
    found = [p for t, p, _ in observer.seen if t == topic]
    return found[-1] if found else None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_home_assistant_sees_every_channel_with_device_class_unit_and_availability(
    fleet_service, broker, device_credentials
):
    site = f"ha-{uuid.uuid4().hex[:6]}"
    (a, pw_a), (b, pw_b) = device_credentials(f"{site}-a"), device_credentials(f"{site}-b")
    with Session(fleet_service.engine) as s:
        register_device(s, a, site, "Salle 2.14")
        register_device(s, b, site, "Salle 2.14")
        s.get(Device, a).name = "Climat salle 2.14"
        s.commit()
        admin = create_token(s, f"admin-{site}", Role.admin)[1]
    # Left on the broker before this run: our document of a device since deleted, and another
    # integration's document under the same prefix.
    config = f"homeassistant/sensor/{site}/"
    stale, foreign = f"{config}{site}-gone_co2/config", f"{config}zigbee_lux/config"
    stale_doc = {
        "unique_id": f"maille_{site}-gone_co2",
        "state_topic": f"maille/sites/{site}/x/co2/{site}-gone",
    }
    stale_doc |= {"availability": [{"topic": f"maille/sites/{site}/_devices/availability/{site}-gone"}]}
    stale_doc |= {"device": {"identifiers": [f"maille_{site}-gone"]}}
    fleet_account = Observer(broker, [])
    for topic, doc in ((stale, stale_doc), (foreign, {"unique_id": "zigbee_lux", "state_topic": "z/lux"})):
        fleet_account.client.publish(topic, json.dumps(doc), qos=1, retain=True).wait_for_publish(5)
    fleet = fleet_service(integrations=FAST)
    ha = Observer(broker, ["homeassistant/#", f"maille/sites/{site}/#"])
    node_a, node_b = Node(broker, a, pw_a), Node(broker, b, pw_b)
    try:
        node_a.send("state", {"state": "online", "fw": "1.4.2", "board": "esp32-devkitc"}, retain=True)
        node_b.send("state", {"state": "online", "fw": "1.4.2", "board": "esp32-devkitc"}, retain=True)
        now = time.time()
        _telemetry(node_a, 1, now - 10, {n: (u, v) for n, (_, _, u, v) in EXPECTED.items()})
        _telemetry(node_b, 1, now, {"co2": ("ppm", 1250.0)})

        # Discovery: one valid document per channel, with Home Assistant's device class and unit.
        wanted = {f"{config}{a}_{n}/config" for n in EXPECTED} | {f"{config}{b}_co2/config"}
        wait_until(lambda: wanted <= {t for t, p in _docs(ha, config).items() if p}, 15, what="discovery")
        wait_until(lambda: _latest(ha, stale) == b"", 10, what="the stale document cleared")
        docs = {t: json.loads(p) for t, p in _docs(ha, config).items() if p and t != foreign}
        assert set(docs) == wanted
        assert json.loads(_latest(ha, foreign))["unique_id"] == "zigbee_lux"  # not ours: left alone
        for topic, doc in docs.items():
            assert re.match(HA_TOPIC, topic)
            jsonschema.validate(doc, HA_SENSOR)
            device_class, unit = doc.get("device_class"), doc.get("unit_of_measurement")
            if device_class:
                assert unit in HA_UNITS[device_class], (topic, unit)
                assert doc.get("state_class") in HA_STATE_CLASSES[device_class] | {None}, topic
        by_metric = {t.removeprefix(f"{config}{a}_").removesuffix("/config"): d for t, d in docs.items()}
        for metric, (device_class, unit, _, value) in EXPECTED.items():
            doc = by_metric[metric]
            assert (doc.get("device_class"), doc.get("unit_of_measurement")) == (device_class, unit), metric
            # Follow the state topic as Home Assistant does: the retained JSON and its value_template.
            state = _retained(ha, doc["state_topic"])
            jsonschema.validate(state, SITE_VALUE, format_checker=jsonschema.FormatChecker())
            assert doc["value_template"] == "{{ value_json.value }}" and state["value"] == value
            assert state["device"] == a
        device = by_metric["co2"]["device"]
        assert device["identifiers"] == [f"maille_{a}"] and device["name"] == "Climat salle 2.14"
        assert (device["model"], device["sw_version"], device["suggested_area"]) == (
            "esp32-devkitc",
            "1.4.2",
            "Salle 2.14",
        )
        availability = by_metric["co2"]["availability"][0]
        assert availability["topic"] == f"maille/sites/{site}/_devices/availability/{a}"
        wait_until(lambda: _latest(ha, availability["topic"]) == b"online", 10, what="online")

        # Two devices, one room: the room topic holds the newest reading; a late backlog does not win.
        room = f"maille/sites/{site}/salle-2-14/co2"
        wait_until(
            lambda: (_latest(ha, room) or b"{}") != b"{}" and json.loads(_latest(ha, room))["device"] == b
        )
        _telemetry(node_a, 2, now - 60, {"co2": ("ppm", 400.0)})
        wait_until(lambda: json.loads(_latest(ha, f"{room}/{a}") or b"{}").get("value") == 400.0)
        assert json.loads(_latest(ha, room)) == {
            "value": 1250.0,
            "unit": "ppm",
            "ts": json.loads(_latest(ha, f"{room}/{b}"))["ts"],
            "device": b,
        }

        # Availability follows presence: the node's last will makes it unavailable in Home Assistant.
        node_a.vanish()
        wait_until(lambda: _latest(ha, availability["topic"]) == b"offline", 15, what="offline")

        # A retired device's documents and values are removed (empty retained messages).
        with httpx.Client(base_url=fleet.api, headers=bearer(admin)) as http:
            assert http.patch(f"/api/v1/devices/{b}", json={"lifecycle": "retired"}).status_code == 200
        gone = f"{config}{b}_co2/config"
        wait_until(lambda: _latest(ha, gone) == b"", 10, what="document removed")
        wait_until(lambda: _latest(ha, f"{room}/{b}") == b"", 10, what="value removed")
        assert _latest(ha, f"{config}{a}_co2/config")  # the other device stays
        metrics = httpx.get(f"{fleet.api}/metrics").text
        assert f"\nmaille_hass_documents {len(EXPECTED)}\n" in metrics  # b retired
        assert int(re.search(r"^maille_sitetopics_published_total (\d+)$", metrics, re.M)[1]) >= 16
    finally:
        node_b.close()
        ha.client.disconnect()
        fleet_account.client.publish(foreign, b"", qos=1, retain=True).wait_for_publish(5)
        fleet_account.client.disconnect()
        for d in (a, b):
            clear_retained(broker, d)


def _docs(observer: Observer, prefix: str) -> dict[str, bytes]:
    try:
        observer.wait(lambda t, p: False, 0.05)
    except TimeoutError:
        pass
    return {t: p for t, p, _ in observer.seen if t.startswith(prefix)}
