"""Roles, site scopes and the audit log over the real API and database (issue 3, acceptance (d)), and
the registry's CRUD rules."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from fleet.api import create_app
from fleet.auth import PERMISSIONS, Perm, Role, hash_token
from fleet.models import ApiToken
from fleet.registry import register_device
from tests.fleet.conftest import bearer


@pytest.fixture
def two_sites(engine):
    """Site A (bliiida) and site B (school) with one device each."""
    with Session(engine) as s:
        register_device(s, "bliiida-1", "bliiida", "2.14")
        register_device(s, "school-1", "school", "A.01")
    return engine


@pytest.fixture
def api(two_sites, token):
    """Factory: a client of the app with a new token of `role` (scoped to `sites`), or none."""
    app = create_app(two_sites)

    def client(role: str | None = None, *sites: str) -> TestClient:
        return TestClient(app, headers=bearer(token(role, *sites)) if role else {})

    return client


def assert_problem(response, status: int, detail: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]
    return response.json()


def test_no_token_or_a_bad_one_is_401_with_a_challenge(api):
    anonymous = api()
    response = anonymous.get("/api/v1/devices")
    assert_problem(response, 401, "needs an API token")
    assert response.headers["www-authenticate"] == 'Bearer realm="maille"'
    response = anonymous.get("/api/v1/devices", headers=bearer("mt_not-a-token"))
    assert_problem(response, 401, "unknown or revoked")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert anonymous.get("/healthz").status_code == 200 and anonymous.get("/metrics").status_code == 200


def test_tokens_are_stored_hashed_and_can_be_revoked(engine, api, token):
    secret = token("viewer", name="kiosk")
    with Session(engine) as s:
        stored = s.exec(select(ApiToken).where(ApiToken.name == "kiosk")).one()
    assert secret.startswith("mt_") and len(secret) >= 43 and stored.hash == hash_token(secret)
    assert secret not in repr(stored.model_dump())
    admin = api("admin")
    assert admin.get("/api/v1/devices", headers=bearer(secret)).status_code == 200
    assert admin.delete("/api/v1/tokens/kiosk").status_code == 204
    assert_problem(admin.get("/api/v1/devices", headers=bearer(secret)), 401, "revoked")
    assert all("hash" not in (e["after"] or {}) for e in admin.get("/api/v1/audit").json())


def test_integrator_scoped_to_site_a_cannot_read_site_b(api):
    integrator = api("integrator", "bliiida")
    assert [d["id"] for d in integrator.get("/api/v1/devices").json()] == ["bliiida-1"]
    assert integrator.get("/api/v1/devices/bliiida-1").status_code == 200
    assert integrator.get("/api/v1/devices/bliiida-1/readings").status_code == 200
    assert_problem(integrator.get("/api/v1/devices/school-1"), 403, "not allowed on this site")
    assert_problem(integrator.get("/api/v1/devices/school-1/readings"), 403)
    assert_problem(integrator.get("/api/v1/sites/school"), 403)
    assert_problem(integrator.get("/api/v1/devices", params={"site": "school"}), 403)
    assert [s["slug"] for s in integrator.get("/api/v1/sites").json()] == ["bliiida"]
    assert_problem(integrator.get("/api/v1/rejects"), 403, "may not read:ops")


def test_integrator_tokens_need_a_site(api):
    response = api("admin").post("/api/v1/tokens", json={"name": "erp", "role": "integrator"})
    assert_problem(response, 422, "needs at least one --site")


def test_viewer_cannot_write(api):
    viewer = api("viewer")
    assert viewer.get("/api/v1/devices/school-1").status_code == 200
    assert_problem(
        viewer.post("/api/v1/sites", json={"slug": "x", "name": "X"}), 403, "may not registry:write"
    )
    assert_problem(viewer.patch("/api/v1/devices/school-1", json={"tags": ["a"]}), 403, "device:write")
    assert_problem(viewer.delete("/api/v1/devices/school-1"), 403)
    assert_problem(viewer.post("/api/v1/devices/school-1/commands", json={"cmd": "identify"}), 403)
    assert_problem(viewer.put("/api/v1/devices/school-1/config", json={"log_level": "debug"}), 403)


def test_technician_edits_devices_but_not_buildings(api):
    tech = api("technician")
    assert tech.patch("/api/v1/devices/school-1", json={"tags": ["co2", "pilot"]}).json()["tags"] == [
        "co2",
        "pilot",
    ]
    assert_problem(tech.post("/api/v1/sites", json={"slug": "x", "name": "X"}), 403)


def test_scoped_operator_cannot_create_sites_or_touch_other_sites(api):
    operator = api("operator", "bliiida")
    assert_problem(
        operator.post("/api/v1/sites", json={"slug": "x", "name": "X"}), 403, "limited to some sites"
    )
    school = api("admin").get("/api/v1/sites/school").json()
    assert_problem(
        operator.post("/api/v1/buildings", json={"site_id": school["id"], "slug": "b", "name": "B"}), 403
    )


def test_every_write_is_in_the_audit_log_with_who_before_and_after(api, token):
    admin = TestClient(api("admin").app, headers=bearer(token("admin", name="alice")))
    site = admin.post("/api/v1/sites", json={"slug": "lycee", "name": "Lycée Fabert"}).json()
    building = admin.post("/api/v1/buildings", json={"site_id": site["id"], "slug": "a", "name": "A"}).json()
    floor = admin.post("/api/v1/floors", json={"building_id": building["id"], "name": "1", "level": 1}).json()
    zone = admin.post("/api/v1/zones", json={"building_id": building["id"], "name": "north"}).json()
    room = admin.post(
        "/api/v1/rooms", json={"floor_id": floor["id"], "name": "1.05", "zone_id": zone["id"]}
    ).json()
    device = admin.post(
        "/api/v1/devices", json={"id": "lycee-1", "site": "lycee", "room_id": room["id"], "tags": ["co2"]}
    )
    assert device.status_code == 201 and device.json()["room"] == "1.05"
    admin.patch(f"/api/v1/rooms/{room['id']}", json={"use": "classroom"})
    admin.post(
        "/api/v1/devices/lycee-1/sensors", json={"model": "scd41", "channel": "co2", "offsets": {"co2": -12}}
    )
    admin.patch("/api/v1/devices/lycee-1", json={"lifecycle": "retired"})
    admin.delete("/api/v1/devices/lycee-1")
    admin.delete(f"/api/v1/rooms/{room['id']}")

    log = [e for e in admin.get("/api/v1/audit", params={"limit": 1000}).json() if e["who"] == "alice"]
    assert [(e["action"], e["entity"]) for e in log] == [
        ("create", "site"),
        ("create", "building"),
        ("create", "floor"),
        ("create", "zone"),
        ("create", "room"),
        ("create", "device"),
        ("update", "room"),
        ("create", "device_sensor"),
        ("update", "device"),
        ("delete", "device"),
        ("delete", "room"),
    ]
    update = log[8]
    assert (update["before"]["lifecycle"], update["after"]["lifecycle"]) == ("provisioned", "retired")
    assert log[-1]["before"]["use"] == "classroom" and log[-1]["after"] is None


def test_delete_refuses_while_data_hangs_off_unless_forced(api, two_sites):
    admin = api("admin")
    room_id = admin.get("/api/v1/devices/bliiida-1").json()["room_id"]
    assert_problem(admin.delete(f"/api/v1/rooms/{room_id}"), 409, "still has 1 device")
    assert_problem(admin.delete("/api/v1/sites/bliiida"), 409, "1 building, 1 device")
    assert admin.delete(f"/api/v1/rooms/{room_id}", params={"force": True}).status_code == 204
    assert admin.get("/api/v1/devices/bliiida-1").json()["room"] is None  # unplaced, not deleted
    assert admin.delete("/api/v1/sites/bliiida", params={"force": True}).status_code == 204
    assert_problem(admin.get("/api/v1/devices/bliiida-1"), 404)
    assert [d["id"] for d in admin.get("/api/v1/devices").json()] == ["school-1"]


def test_conflicts_and_bad_bodies_are_problems(api):
    admin = api("admin")
    assert_problem(admin.post("/api/v1/sites", json={"slug": "school", "name": "again"}), 409, "conflicts")
    assert_problem(admin.post("/api/v1/sites", json={"slug": "Bad Slug", "name": "x"}), 422, "body.slug")
    assert_problem(
        admin.post("/api/v1/floors", json={"building_id": 999, "name": "1"}), 422, "no building 999"
    )
    assert_problem(admin.post("/api/v1/devices", json={"id": "x-1", "site": "nowhere"}), 422, "no site")


def test_permission_table_is_as_documented():
    """docs/operators.md shows this table; the two must not drift apart."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "operators.md").read_text()
    for role in Role:
        row = next(line for line in doc.splitlines() if line.startswith(f"| {role} "))
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert {p for p, c in zip(Perm, cells, strict=True) if c == "yes"} == PERMISSIONS[role], role
