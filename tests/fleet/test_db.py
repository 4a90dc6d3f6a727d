"""Engines, migrations and the registry over real SQLite and PostgreSQL databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import Session, SQLModel, select

from fleet.db import make_engine, normalize_url, upgrade
from fleet.models import Device, DeviceStatus, Reading
from fleet.registry import device_counts, devices_by_id, ensure_site, list_devices, register_device


def test_migrations_create_exactly_the_models(engine):
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names()) - {"alembic_version"}
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )
    assert tables == {"site", "device", "reading", "reject"}
    assert diff == []


def test_upgrade_is_idempotent_and_takes_a_url(db_url, engine):
    upgrade(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0001"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5432/d", "postgresql+psycopg://u:p@h:5432/d"),
        ("postgres://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+psycopg2://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_postgres_urls_use_psycopg3(given, expected):
    assert normalize_url(given) == expected


def test_sqlite_pragmas_and_parent_dir(tmp_path):
    eng = make_engine(f"sqlite:///{tmp_path / 'deep' / 'er' / 'maille.db'}")
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    eng.dispose()


def test_register_device_is_idempotent_and_can_move_a_device(engine):
    with Session(engine) as s:
        first = register_device(s, "bliiida-2-14-a", "bliiida", "2.14")
        again = register_device(s, "bliiida-2-14-a", "bliiida", "2.14")
        assert (first.id, first.status, again.site_id) == (
            "bliiida-2-14-a",
            DeviceStatus.provisioned,
            first.site_id,
        )
        moved = register_device(s, "bliiida-2-14-a", "annex", "0.01", board="esp32-c3")
        assert (moved.room, moved.board) == ("0.01", "esp32-c3")
        [(device, site)] = list_devices(s)
        assert site.slug == "annex" and site.name == "annex"
        assert ensure_site(s, "annex", "The Annex").name == "The Annex"
        assert set(devices_by_id(s, ["bliiida-2-14-a", "ghost"])) == {"bliiida-2-14-a"}
        assert device_counts(s) == {"provisioned": 1, "online": 0, "offline": 0}


def test_timestamps_come_back_as_aware_utc(engine):
    paris = timezone(timedelta(hours=1))
    with Session(engine) as s:
        register_device(s, "dev-1", "site", "1.01")
        s.add(
            Reading(
                device_id="dev-1",
                seq=1,
                name="temperature",
                value=20.5,
                ts=datetime(2026, 1, 1, 13, 0, tzinfo=paris),
            )
        )
        s.commit()
    with Session(engine) as s:
        reading = s.exec(select(Reading)).one()
        device = s.get(Device, "dev-1")
    assert reading.ts == datetime(2026, 1, 1, 12, 0, tzinfo=UTC) and reading.ts.tzinfo == UTC
    assert device.created_at.tzinfo == UTC


def test_reading_requires_a_registered_device(engine):
    with Session(engine) as s, pytest.raises(Exception, match="(?i)foreign key"):
        s.add(Reading(device_id="nobody", seq=1, name="t", value=1, ts=datetime.now(UTC)))
        s.commit()
