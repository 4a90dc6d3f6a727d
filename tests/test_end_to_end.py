"""Virtual boards (real micropython) -> private Mosquitto -> ingest -> database -> API."""

import json

import httpx
import paho.mqtt.client as mqtt
from sqlalchemy import text
from sqlmodel import Session

from fleet.auth import Role, create_token
from fleet.registry import register_device
from tests.helpers import node_config, wait_until


def register(engine, *device_ids, site="test-site"):
    with Session(engine) as s:
        for d in device_ids:
            register_device(s, d, site, room="1.01", board="sim")
        s.commit()


def api(fleet):
    """An HTTP client for the fleet's API with an admin token."""
    with Session(fleet.engine) as s:
        secret = create_token(s, f"e2e-{id(fleet)}", Role.admin)[1]
    return httpx.Client(base_url=fleet.api, headers={"Authorization": f"Bearer {secret}"})


def stored_rows(engine, device_id):
    with engine.connect() as c:
        return c.execute(text("SELECT seq, name FROM reading WHERE device_id = :d"), {"d": device_id}).all()


def test_three_boards_every_sent_reading_is_stored_once(
    fleet_service, broker, device_credentials, boards, tmp_path
):
    fleet = fleet_service()
    creds = [device_credentials() for _ in range(3)]
    register(fleet.engine, *(d for d, _ in creds))
    vbs = [
        boards(tmp_path / d, node_config(d, broker), {"user": d, "password": pw}).start() for d, pw in creds
    ]
    for vb in vbs:
        vb.wait_for(r"sent seq=9\b", timeout=30)

    http = api(fleet)
    devices = http.get("/api/v1/devices").json()
    by_id = {d["id"]: d for d in devices}
    assert all(by_id[d]["status"] == "online" for d, _ in creds), devices

    for vb in vbs:
        vb.power_cut()
    for vb, (device, _) in zip(vbs, creds, strict=True):
        sent = vb.sent_seqs()
        assert sent == sorted(set(sent)) and len(sent) >= 10

        def all_stored(d=device, sent=sent):
            return {s for s, _ in stored_rows(fleet.engine, d)} >= set(sent)

        wait_until(all_stored, 15, what="stored")
        rows = stored_rows(fleet.engine, device)
        assert len(rows) == len(set(rows)), "a reading was stored twice"
        for seq in sent:  # each telemetry message carries temperature and humidity
            assert sorted(n for s, n in rows if s == seq) == ["humidity", "temperature"]
        readings = http.get(f"/api/v1/devices/{device}/readings", params={"metric": "temperature"}).json()
        assert len(readings) >= len(sent)

    wait_until(
        lambda: all(d["status"] == "offline" for d in http.get("/api/v1/devices").json()),
        10,
        what="LWT marks the killed boards offline",
    )


def test_a_device_cannot_publish_to_another_devices_topics(fleet_service, broker, device_credentials):
    fleet = fleet_service()
    (intruder, pw), (victim, _) = device_credentials(), device_credentials()
    register(fleet.engine, intruder, victim)

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=intruder, protocol=mqtt.MQTTv311)
    c.username_pw_set(intruder, pw)
    c.connect(broker.host, broker.port)
    c.loop_start()
    forged = {"seq": 1, "bt": 1795686126, "e": [{"n": "co2", "u": "ppm", "v": 5000}]}
    c.publish(f"maille/v1/{victim}/telemetry", json.dumps(forged), qos=1).wait_for_publish(5)
    c.publish(
        f"maille/v1/{victim}/state", json.dumps({"state": "online"}), qos=1, retain=True
    ).wait_for_publish(5)
    # then a legitimate message on its own topic: once that is stored, the forged ones had their chance
    own = {"seq": 7, "bt": 1795686126, "e": [{"n": "co2", "u": "ppm", "v": 420}]}
    c.publish(f"maille/v1/{intruder}/telemetry", json.dumps(own), qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()

    wait_until(lambda: stored_rows(fleet.engine, intruder), 10, what="the intruder's own reading")
    assert stored_rows(fleet.engine, victim) == []
    victim_row = api(fleet).get(f"/api/v1/devices/{victim}").json()
    assert victim_row["status"] != "online"
