"""`maille site apply`: the shipped site files, a change, --dry-run, --prune, validation errors; the
site's calendar from its file and through the API (roles, audit, problem+json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from fleet.api import create_app
from fleet.auth import Role, create_token
from fleet.cli import app
from fleet.db import make_engine, upgrade
from fleet.models import (
    AuditLog,
    Building,
    Device,
    DeviceCredential,
    DeviceSensor,
    Floor,
    Room,
    Site,
    SiteWifi,
)
from fleet.registry import create_device
from fleet.sites import find_room

SITES = Path(__file__).resolve().parent.parent / "sites"
WIFI_PASSWORD = "wifi-secret-5e1f"


@pytest.fixture
def maille(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("MAILLE_DATABASE_URL", db_url)
    monkeypatch.setenv("MAILLE_SETTINGS_FILE", str(tmp_path / "none.toml"))
    monkeypatch.setenv("MAILLE_WIFI_BLIIIDA", WIFI_PASSWORD)
    monkeypatch.setenv("MAILLE_WIFI_ECOLE_EXAMPLE", "school-wifi")
    monkeypatch.setenv("COLUMNS", "300")
    engine = make_engine(db_url)
    upgrade(engine)

    def run(*args, code=0) -> str:
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    run.engine = engine
    yield run
    engine.dispose()


def snapshot(engine) -> dict:
    with Session(engine) as s:
        return {
            m.__tablename__: sorted(json.dumps(r.model_dump(), default=str) for r in s.exec(select(m)).all())
            for m in (Building, Floor, Room, Device, DeviceSensor, SiteWifi, AuditLog)
        }


def edited(tmp_path: Path, old: str, new: str) -> Path:
    text = (SITES / "bliiida.toml").read_text()
    assert old in text
    path = tmp_path / "bliiida.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_bliiida_apply_change_dry_run_and_prune(maille, tmp_path):
    out = maille("site", "apply", SITES / "bliiida.toml")
    assert "+ create room bliiida/a/2/2.14" in out and "+ create device bliiida-2-14-a" in out
    assert WIFI_PASSWORD not in out
    with Session(maille.engine) as s:
        meters = s.exec(select(DeviceSensor).where(DeviceSensor.device_id == "bliiida-0-04-a")).all()
        assert sorted((m.model, m.channel) for m in meters) == [("s0", "water"), ("sdm630", "energy")]
        assert s.exec(select(SiteWifi)).one().password == WIFI_PASSWORD
    assert WIFI_PASSWORD not in json.dumps(snapshot(maille.engine)["audit_log"])

    # again: nothing changes, not even the audit log
    before = snapshot(maille.engine)
    assert "bliiida: 0 changed" in maille("site", "apply", SITES / "bliiida.toml")
    assert snapshot(maille.engine) == before

    # a change, dry run first: the diff is printed, the database untouched
    changed = edited(tmp_path, 'name = "Halle B"', 'name = "Halle B (fablab)"')
    out = maille("site", "apply", changed, "--dry-run")
    assert "~ update building bliiida/b: name 'Halle B' -> 'Halle B (fablab)'" in out
    assert "(dry run)" in out and snapshot(maille.engine) == before
    maille("site", "apply", changed)
    with Session(maille.engine) as s:
        assert s.exec(select(Building).where(Building.slug == "b")).one().name == "Halle B (fablab)"

    # a room that holds a device is kept when the file drops it, unless --prune
    with Session(maille.engine) as s:  # a node a technician put there
        site, room = find_room(s, "bliiida", "2.15")
        create_device(s, "test", {"id": "bliiida-tech-1", "site_id": site.id, "room_id": room.id})
    dropped = tmp_path / "dropped.toml"
    dropped.write_text(changed.read_text().replace('name = "2.15"\nuse = "atelier"\n', 'name = "2.16"\n'))
    assert "2.15" not in dropped.read_text().split("[[building.floor.room]]")[3]
    out = maille("site", "apply", dropped)
    assert "= keep room bliiida/a/2/2.15: not in the file, holds 1 devices; --prune deletes it" in out
    assert "+ create room bliiida/a/2/2.16" in out
    out = maille("site", "apply", dropped, "--prune")
    assert "- delete room bliiida/a/2/2.15: with 1 devices" in out
    with Session(maille.engine) as s:
        assert s.exec(select(Room).where(Room.name == "2.15")).first() is None
        assert s.get(Device, "bliiida-tech-1").room_id is None  # unplaced, not deleted


def test_an_expected_node_with_credentials_is_kept_without_prune(maille, tmp_path):
    from fleet import credentials

    maille("site", "apply", SITES / "bliiida.toml")
    with Session(maille.engine) as s:
        credentials.issue(s, "bliiida-b-01-a", "test")
        s.commit()
    without = edited(tmp_path, '[[building.floor.room.node]]\nname = "Fablab"', "")
    without.write_text(without.read_text().replace('board = "esp32-s3-devkitc-1"\n', ""))
    out = maille("site", "apply", without)
    assert "= keep device bliiida-b-01-a: not in the file, holds 1 credentials" in out
    out = maille("site", "apply", without, "--prune")
    assert "- delete device bliiida-b-01-a" in out
    with Session(maille.engine) as s:
        assert s.exec(select(DeviceCredential)).all() == []


def test_school_example_applies(maille):
    out = maille("site", "apply", SITES / "ecole-example.toml")
    assert "+ create device ecole-example-cm2-a: in ecole-example/principal/1/cm2" in out
    assert "school-wifi" not in out


def test_errors_name_the_file_and_line(maille, tmp_path):
    bad = edited(tmp_path, 'board = "olimex-esp32-poe"', 'board = "no-such-board"')
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if "no-such-board" in t)
    out = maille("site", "apply", bad, code=1)
    assert f"{bad}:{line}: unknown board 'no-such-board'" in " ".join(out.split())
    bad.write_text(bad.read_text().replace('board = "no-such-board"', 'board = "esp32-devkitc"\ncolour = 3'))
    out = maille("site", "apply", bad, code=1)
    assert f"{bad}:{line + 1}: building.0.floor.0.room.1.node.0.colour: Extra inputs are not permitted" in out
    dup = edited(tmp_path, 'name = "2.15"', 'name = "2.14"')
    out = maille("site", "apply", dup, code=1)
    assert "room '2.14' appears twice" in out
    with Session(maille.engine) as s:
        assert s.exec(select(Building)).all() == []


CALENDAR = """
[site.calendar]
tz = "Europe/Paris"
closed = [{ start = 2026-12-19, end = 2027-01-03, name = "Noël" }]

[site.calendar.week]
mon = [{ start = "08:00", end = "12:00" }, { start = "13:30", end = "19:00" }]
tue = [{ start = "08:00", end = "19:00" }]
"""


def with_calendar(tmp_path: Path, calendar: str, name: str = "bliiida.toml") -> Path:
    text = (SITES / "bliiida.toml").read_text()
    path = tmp_path / name
    path.write_text(text.replace("\n[[building]]", calendar + "\n[[building]]", 1))
    return path


def stored_calendar(engine) -> dict | None:
    with Session(engine) as s:
        return s.exec(select(Site).where(Site.slug == "bliiida")).one().calendar


def test_the_site_file_sets_the_calendar(maille, tmp_path):
    out = maille("site", "apply", with_calendar(tmp_path, CALENDAR))
    assert "calendar=Europe/Paris, 3 weekly spans on 2 days, 1 closures" in out
    cal = stored_calendar(maille.engine)
    assert cal["week"]["mon"][1] == {"start": "13:30:00", "end": "19:00:00"}
    assert cal["closed"] == [{"start": "2026-12-19", "end": "2027-01-03", "name": "Noël"}]
    assert "bliiida: 0 changed" in maille("site", "apply", with_calendar(tmp_path, CALENDAR))
    later = CALENDAR.replace(
        'tue = [{ start = "08:00", end = "19:00" }]', 'tue = [{ start = "09:00", end = "19:00" }]'
    )
    out = maille("site", "apply", with_calendar(tmp_path, later))
    assert "~ update site bliiida: calendar changed: Europe/Paris, 3 weekly spans" in out
    assert stored_calendar(maille.engine)["week"]["tue"] == [{"start": "09:00:00", "end": "19:00:00"}]
    # a file without a calendar leaves the stored one (set through the API, say) alone
    assert "bliiida: 0 changed" in maille("site", "apply", SITES / "bliiida.toml")
    assert stored_calendar(maille.engine)["week"]["tue"][0]["start"] == "09:00:00"


def test_a_bad_calendar_in_the_file_names_its_line(maille, tmp_path):
    bad = with_calendar(tmp_path, CALENDAR.replace("Europe/Paris", "Europe/Metz"))
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if "Europe/Metz" in t)
    out = maille("site", "apply", bad, code=1)
    assert f"{bad}:{line}: site.calendar.tz: Value error, unknown time zone 'Europe/Metz'" in out
    bad = with_calendar(tmp_path, CALENDAR.replace('"13:30"', '"11:30"'))
    out = maille("site", "apply", bad, code=1)
    assert "mon: spans 08:00:00–12:00:00 and 11:30:00–19:00:00 overlap" in " ".join(out.split())
    with Session(maille.engine) as s:
        assert s.exec(select(Site)).all() == []


def test_calendar_api_roles_audit_and_problems(maille):
    maille("site", "apply", SITES / "bliiida.toml")
    maille("site", "apply", SITES / "ecole-example.toml")
    with Session(maille.engine) as s:
        secret = {
            name: create_token(s, name, role, sites)[1]
            for name, role, sites in (
                ("ops", Role.operator, ()),
                ("viewer", Role.viewer, ()),
                ("tech", Role.technician, ()),
                ("ecole-ops", Role.operator, ("ecole-example",)),
            )
        }
    api = TestClient(create_app(maille.engine))

    def call(method: str, who: str, **kw):
        return api.request(
            method, "/api/v1/sites/bliiida/calendar", headers={"Authorization": f"Bearer {secret[who]}"}, **kw
        )

    def problem(r, status: int, detail: str) -> None:
        assert r.status_code == status and r.headers["content-type"] == "application/problem+json", r.text
        assert detail in r.json()["detail"], r.json()

    body = {"tz": "Europe/Paris", "week": {"wed": [{"start": "08:00", "end": "12:00"}]}}
    problem(call("GET", "viewer"), 404, "site bliiida has no calendar")
    problem(call("PUT", "viewer", json=body), 403, "")
    problem(call("PUT", "tech", json=body), 403, "")
    problem(call("PUT", "ecole-ops", json=body), 403, "")
    overlap = {"week": {"wed": [{"start": "08:00", "end": "12:00"}, {"start": "11:00", "end": "13:00"}]}}
    problem(
        call("PUT", "ops", json=overlap), 422, "wed: spans 08:00:00–12:00:00 and 11:00:00–13:00:00 overlap"
    )
    problem(call("PUT", "ops", json={"tz": "Mars/Olympus"}), 422, "unknown time zone 'Mars/Olympus'")
    problem(call("PUT", "ops", json={"week": {"wed": [{"start": "8h", "end": "12:00"}]}}), 422, "start")
    assert stored_calendar(maille.engine) is None
    r = call("PUT", "ops", json=body)
    assert r.status_code == 200 and r.json()["week"]["wed"] == [{"start": "08:00:00", "end": "12:00:00"}]
    assert call("GET", "viewer").json() == r.json() == stored_calendar(maille.engine) | {"closed": []}
    with Session(maille.engine) as s:
        entry = s.exec(select(AuditLog).where(AuditLog.who == "ops")).one()
        assert (entry.action, entry.entity, entry.entity_id) == ("update", "site", "bliiida")
        assert entry.before["calendar"] is None and entry.after["calendar"]["tz"] == "Europe/Paris"
    problem(
        api.get("/api/v1/sites/nowhere/calendar", headers={"Authorization": f"Bearer {secret['ops']}"}),
        404,
        "no site 'nowhere'",
    )
    assert call("DELETE", "ops").status_code == 204
    problem(call("GET", "ops"), 404, "has no calendar")
