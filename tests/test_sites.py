"""`maille site apply`: the shipped site files, a change, --dry-run, --prune, validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from fleet.cli import app
from fleet.db import make_engine, upgrade
from fleet.models import AuditLog, Building, Device, DeviceCredential, DeviceSensor, Floor, Room, SiteWifi
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
