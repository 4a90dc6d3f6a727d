"""Scoped access for start-ups: a token limited to one site and one metric reads that data through the
API and, with its broker account, through the site topics; it is refused everywhere else (403, broker
ACL), and revoking it closes both doors."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import paho.mqtt.client as mqtt
import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from fleet import audit, credentials
from fleet.auth import Role, create_token
from fleet.broker import verify_password
from fleet.cli import app
from fleet.db import make_engine, upgrade
from fleet.integrations.config import IntegrationSettings
from fleet.registry import register_device
from tests.fleet.conftest import Node, bearer
from tests.helpers import Observer, wait_until


def maille(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def connack(broker, user: str, password: str) -> str:
    """What the broker answers a new connection (paho's name of the CONNACK code)."""
    codes: list[str] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.username_pw_set(user, password)
    client.on_connect = lambda c, u, f, rc, p: codes.append(str(rc))
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        return wait_until(lambda: codes, 10, what="CONNACK")[0]
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_startup_token_reads_its_site_and_metric_through_api_and_broker_and_nothing_else(
    fleet_service, fresh_broker, db_url, monkeypatch, tmp_path
):
    broker, tag = fresh_broker, uuid.uuid4().hex[:6]
    alpha, beta, name = f"alpha-{tag}", f"beta-{tag}", f"acme-{tag}"
    for key, value in {
        "MAILLE_SETTINGS_FILE": str(tmp_path / "none.toml"),
        "MAILLE_DATABASE_URL": db_url,
        "MAILLE_MQTT_URL": broker.fleet_url,
        "MAILLE_BROKER_PASSWORD_FILE": str(broker.users.password_file),
        "MAILLE_BROKER_ACL_FILE": str(broker.users.acl_file),
        "MAILLE_BROKER_RELOAD": f"kill -HUP {broker.proc.pid}",
    }.items():
        monkeypatch.setenv(key, value)
    a, b = f"{alpha}-a", f"{beta}-b"
    with Session(fleet_service.engine) as s:
        register_device(s, a, alpha, "1.01")
        register_device(s, b, beta, "1.01")
        passwords = {d: credentials.issue(s, d, "test") for d in (a, b)}
        s.commit()
        admin = create_token(s, f"admin-{tag}", Role.admin)[1]
    maille("broker", "sync")
    secret = maille(
        "token",
        "create",
        "--role",
        "integrator",
        "--site",
        alpha,
        "--metric",
        "co2",
        "--broker",
        "--name",
        name,
    ).strip()
    acl = broker.users.acl_file.read_text()
    assert f"user token.{name}\ntopic read maille/sites/{alpha}/+/co2\n" in acl

    fleet = fleet_service(  # administering the broker's files, as production does
        on=broker,
        integrations=IntegrationSettings(interval_s=0.3),
        broker_password_file=broker.users.password_file,
        broker_acl_file=broker.users.acl_file,
        broker_reload=f"kill -HUP {broker.proc.pid}",
    )
    startup = Observer(broker, ["#"], user=f"token.{name}", password=secret)  # all it may get
    fleet_eye = Observer(broker, [f"maille/sites/{alpha}/#"])
    nodes = [Node(broker, d, passwords[d]) for d in (a, b)]
    try:
        for i, node in enumerate(nodes):
            node.send("state", {"state": "online"}, retain=True)
            body = {"seq": 1, "bt": time.time(), "e": [{"n": "co2", "u": "ppm", "v": 700.0 + i}]}
            body["e"].append({"n": "temperature", "u": "Cel", "v": 20.5})
            node.send("telemetry", body)

        # The broker: its site's co2 topics and availability, nothing else (no temperature, no other
        # site, no device topics, no discovery documents).
        room = f"maille/sites/{alpha}/1-01/co2"
        startup.wait(lambda t, p: t == room, 15)
        fleet_eye.wait(lambda t, p: t == f"maille/sites/{alpha}/1-01/temperature", 15)  # it was published
        fleet_eye.wait(lambda t, p: t.endswith(f"/availability/{a}") and p == b"online", 15)
        startup.wait(lambda t, p: t.endswith(f"/availability/{a}"), 5)
        with pytest.raises(TimeoutError):  # take in all it was sent
            startup.wait(lambda t, p: False, 0.5)
        allowed = {room, f"{room}/{a}", f"maille/sites/{alpha}/_devices/availability/{a}"}
        assert {t for t, _, _ in startup.seen} <= allowed, startup.seen
        startup.client.publish(room, json.dumps({"value": 9999}), qos=1).wait_for_publish(5)  # denied
        with pytest.raises(TimeoutError):
            fleet_eye.wait(lambda t, p: b"9999" in p, 0.5)

        # The API: the same scope; 403 for another metric, another site's device, room or listing.
        with httpx.Client(base_url=fleet.api, headers=bearer(secret)) as http:
            ok = http.get(f"/api/v1/devices/{a}/readings", params={"metric": "co2"})
            assert ok.status_code == 200 and [r["value"] for r in ok.json()] == [700.0]
            unnamed = http.get(f"/api/v1/devices/{a}/readings").json()
            assert {r["name"] for r in unnamed} == {"co2"}  # no metric named: only its own
            assert [c["name"] for c in http.get(f"/api/v1/devices/{a}/channels").json()] == ["co2"]
            other_metric = http.get(f"/api/v1/devices/{a}/readings", params={"metric": "temperature"})
            assert other_metric.status_code == 403
            assert other_metric.headers["content-type"] == "application/problem+json"
            assert "only these metrics: co2" in other_metric.json()["detail"]
            assert http.get(f"/api/v1/devices/{b}/readings", params={"metric": "co2"}).status_code == 403
            assert http.get("/api/v1/devices", params={"site": beta}).status_code == 403
            assert http.get(f"/api/v1/devices/{b}").status_code == 403
            assert [d["id"] for d in http.get("/api/v1/devices").json()] == [a]
            assert http.get("/api/v1/tokens").status_code == 403
        with httpx.Client(base_url=fleet.api, headers=bearer(admin)) as http:
            (listed,) = [t for t in http.get("/api/v1/tokens").json() if t["name"] == name]
            assert (listed["metrics"], listed["broker_user"]) == (["co2"], f"token.{name}")
            made = http.post("/api/v1/tokens", json={"name": f"hass-{tag}", "role": "viewer", "broker": True})
            assert made.status_code == 201 and made.json()["broker_user"] == f"token.hass-{tag}"
            assert made.json()["metrics"] is None and made.json()["token"].startswith("mt_")
            assert f"user token.hass-{tag}\n" in broker.users.acl_file.read_text()  # synced at once
            bad = http.post("/api/v1/tokens", json={"name": "x", "role": "viewer", "metrics": ["CO2"]})
            assert bad.status_code == 422 and "metrics" in bad.json()["detail"]

        # Revoked through the API: it answers 401, the broker drops the account and refuses it.
        with httpx.Client(base_url=fleet.api, headers=bearer(admin)) as http:
            assert http.delete(f"/api/v1/tokens/{name}").status_code == 204
        wait_until(lambda: not startup.client.is_connected(), 10, what="the broker dropped the token")
        assert connack(broker, f"token.{name}", secret) == "Not authorized"
        with httpx.Client(base_url=fleet.api, headers=bearer(secret)) as http:
            assert http.get(f"/api/v1/devices/{a}/readings").status_code == 401
        maille("token", "revoke", f"hass-{tag}")  # the CLI syncs the broker too
        assert f"user token.hass-{tag}\n" not in broker.users.acl_file.read_text()
    finally:
        for node in nodes:
            node.close()
        startup.client.loop_stop()
        fleet_eye.client.disconnect()


def test_token_scope_is_checked_at_creation(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    with Session(engine) as s:
        with pytest.raises(ValueError, match="not a metric name"):
            create_token(s, "bad", Role.viewer, metrics=["CO2!"])
        with pytest.raises(ValueError, match="a token name is"):  # it becomes an ACL line
            create_token(s, "x\ntopic readwrite #", Role.viewer, broker=True)
        token, secret = create_token(s, "hass", Role.viewer, metrics=[], broker=True)
        assert token.metrics is None and verify_password(secret, token.broker_hash)
        assert "broker_hash" not in json.dumps(audit.recent(s, 10, "api_token")[-1].after)
    engine.dispose()
