"""Engines, migrations and the registry over real SQLite and PostgreSQL databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import Session, SQLModel, select

from fleet.db import head_revision, make_engine, normalize_url, upgrade
from fleet.models import Building, Device, DeviceStatus, Floor, Reading, Rollup, Room
from fleet.registry import device_counts, device_rows, devices_by_id, ensure_site, register_device

TABLES = {
    "site",
    "building",
    "floor",
    "zone",
    "room",
    "device",
    "device_sensor",
    "reading",
    "rollup",
    "channel",
    "alert",
    "device_config",
    "command",
    "api_token",
    "audit_log",
    "reject",
    "site_wifi",
    "device_credential",
    "release",
    "rollout",
    "rollout_wave",
    "rollout_target",
    "health",
}


def _sqlite_inline_reference(diff) -> bool:
    """SQLite keeps `ADD COLUMN … REFERENCES … ON DELETE SET NULL` (0002), but SQLAlchemy's reflection
    does not read ON DELETE from an inline reference; PRAGMA foreign_key_list is checked instead."""
    return diff[0] in ("add_fk", "remove_fk") and diff[1].table.name == "device"


def test_migrations_create_exactly_the_models(engine):
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names()) - {"alembic_version"}
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )
        if conn.dialect.name == "sqlite":
            diff = [d for d in diff if not _sqlite_inline_reference(d)]
            refs = {r[3]: (r[2], r[6]) for r in conn.exec_driver_sql("PRAGMA foreign_key_list(device)")}
            assert refs == {
                "site_id": ("site", "NO ACTION"),
                "room_id": ("room", "SET NULL"),
                "replaced_by": ("device", "SET NULL"),
            }
    assert tables == TABLES
    assert diff == []


def test_0002_moves_devices_into_rooms_and_backfills_rollups(db_url):
    """A database at 0001 with a device and readings comes out of 0002 with the device in a room and
    its readings in the rollups."""
    from alembic import command
    from alembic.config import Config

    from fleet.db import MIGRATIONS

    eng = make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text("INSERT INTO site (slug, name) VALUES ('bliiida', 'BLIIIDA')"))
        conn.execute(
            text(
                "INSERT INTO device (id, site_id, room, board, status, created_at) "
                "VALUES ('dev-1', 1, '2.14', 'sim', 'online', :t)"
            ),
            {"t": datetime(2026, 1, 1, tzinfo=UTC)},
        )
        for seq, minute in enumerate([0, 0, 1]):
            conn.execute(
                text(
                    "INSERT INTO reading (device_id, seq, name, value, ts, received_at) "
                    "VALUES ('dev-1', :s, 'co2', :v, :ts, :ts)"
                ),
                {"s": seq, "v": 400 + seq, "ts": datetime(2026, 1, 1, 12, minute, seq, tzinfo=UTC)},
            )
    upgrade(eng)
    with Session(eng) as s:
        [row] = device_rows(s)
        assert (row.room.name, row.site.slug, row.device.lifecycle) == ("2.14", "bliiida", "active")
        assert s.get(Floor, row.room.floor_id).name == "0"
        assert s.exec(select(Building)).one().slug == "main"
        minutes = s.exec(select(Rollup).where(Rollup.resolution == "1m").order_by(Rollup.bucket)).all()
        assert [(r.count, r.sum, r.min, r.max, r.last) for r in minutes] == [
            (2, 801, 400, 401, 401),
            (1, 402, 402, 402, 402),
        ]
        assert s.exec(select(Rollup).where(Rollup.resolution == "1d")).one().count == 3
    eng.dispose()


def test_upgrade_is_idempotent_and_takes_a_url(db_url, engine):
    upgrade(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head_revision()


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
        [row] = device_rows(s)
        assert (row.room.name, moved.board, moved.room_id) == ("0.01", "esp32-c3", row.room.id)
        assert row.site.slug == "annex" and row.site.name == "annex"
        assert len(s.exec(select(Room)).all()) == 2  # 2.14 stays, under the first site
        assert ensure_site(s, "annex", "The Annex").name == "The Annex"
        assert set(devices_by_id(s, ["bliiida-2-14-a", "ghost"])) == {"bliiida-2-14-a"}
        assert device_counts(s) == {"provisioned": 1, "online": 0, "offline": 0, "asleep": 0}


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
