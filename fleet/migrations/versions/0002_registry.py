"""Registry and operations: buildings, floors, zones, rooms; device lifecycle, tags, room, mode,
config and sleep; sensors, rollups, channels, alerts, config, commands, API tokens, audit log.

Existing devices move to a room of the same name under building `main`, floor `0` of their site, and
existing readings are folded into the new rollups.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-01
"""

import sqlalchemy as sa
from alembic import op

from fleet.rollups import aggregate

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _fk(name: str, target: str, ondelete: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.Integer(), sa.ForeignKey(target, ondelete=ondelete), nullable=nullable)


def _add_fk_column(name: str, target: str, col_type: sa.types.TypeEngine) -> None:
    """A nullable device column referencing `target` ON DELETE SET NULL. SQLite takes the reference
    inline in ADD COLUMN (Alembic would want a table rebuild, which the references to device forbid)."""
    if op.get_bind().dialect.name == "sqlite":
        table, column = target.split(".")
        ddl = col_type.compile(dialect=op.get_bind().dialect)
        op.execute(
            f"ALTER TABLE device ADD COLUMN {name} {ddl} REFERENCES {table}({column}) ON DELETE SET NULL"
        )
    else:
        op.add_column("device", sa.Column(name, col_type, sa.ForeignKey(target, ondelete="SET NULL")))


def _device_fk(name: str = "device_id", primary_key: bool = False) -> sa.Column:
    return sa.Column(
        name,
        sa.String(32),
        sa.ForeignKey("device.id", ondelete="CASCADE"),
        nullable=False,
        primary_key=primary_key,
    )


def _index(table: str, *columns: str) -> None:
    op.create_index(f"ix_{table}_{'_'.join(columns)}", table, list(columns))


def upgrade() -> None:
    op.create_table(
        "building",
        sa.Column("id", sa.Integer(), primary_key=True),
        _fk("site_id", "site.id", "CASCADE"),
        sa.Column("slug", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("address", sa.String(256), nullable=True),
        sa.UniqueConstraint("site_id", "slug", name="uq_building_site_slug"),
    )
    _index("building", "site_id")
    op.create_table(
        "floor",
        sa.Column("id", sa.Integer(), primary_key=True),
        _fk("building_id", "building.id", "CASCADE"),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.UniqueConstraint("building_id", "name", name="uq_floor_building_name"),
    )
    _index("floor", "building_id")
    op.create_table(
        "zone",
        sa.Column("id", sa.Integer(), primary_key=True),
        _fk("building_id", "building.id", "CASCADE"),
        sa.Column("name", sa.String(64), nullable=False),
        sa.UniqueConstraint("building_id", "name", name="uq_zone_building_name"),
    )
    _index("zone", "building_id")
    op.create_table(
        "room",
        sa.Column("id", sa.Integer(), primary_key=True),
        _fk("floor_id", "floor.id", "CASCADE"),
        _fk("zone_id", "zone.id", "SET NULL", nullable=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("use", sa.String(64), nullable=True),
        sa.UniqueConstraint("floor_id", "name", name="uq_room_floor_name"),
    )
    _index("room", "floor_id")
    _index("room", "zone_id")

    # SQLite adds these columns in place (no table rebuild, which foreign keys to device forbid).
    _add_fk_column("room_id", "room.id", sa.Integer())
    op.add_column(
        "device", sa.Column("lifecycle", sa.String(16), nullable=False, server_default="provisioned")
    )
    _add_fk_column("replaced_by", "device.id", sa.String(32))
    op.add_column("device", sa.Column("tags", sa.JSON(), nullable=False, server_default="[]"))
    op.add_column("device", sa.Column("mode", sa.String(8), nullable=True))
    op.add_column("device", sa.Column("config_version", sa.Integer(), nullable=True))
    op.add_column("device", sa.Column("sleep_s", sa.Integer(), nullable=True))
    op.add_column("device", sa.Column("boots_base", sa.Integer(), nullable=True))
    op.add_column("device", sa.Column("boots_since", UTC_DATETIME, nullable=True))
    _index("device", "room_id")
    _move_devices_into_rooms()
    op.drop_column("device", "room")

    op.create_table(
        "device_sensor",
        sa.Column("id", sa.Integer(), primary_key=True),
        _device_fk(),
        sa.Column("model", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("calibrated_on", sa.Date(), nullable=True),
        sa.Column("offsets", sa.JSON(), nullable=False),
    )
    _index("device_sensor", "device_id")
    op.create_table(
        "rollup",
        _device_fk(primary_key=True),
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("resolution", sa.String(4), primary_key=True),
        sa.Column("bucket", UTC_DATETIME, primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.Column("last", sa.Float(), nullable=False),
        sa.Column("last_ts", UTC_DATETIME, nullable=False),
    )
    op.create_table(
        "channel",
        _device_fk(primary_key=True),
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("unit", sa.String(16), nullable=True),
        sa.Column("last_ts", UTC_DATETIME, nullable=False),
        sa.Column("last_at", UTC_DATETIME, nullable=False),
        sa.Column("interval_s", sa.Float(), nullable=True),
    )
    op.create_table(
        "alert",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("rule", sa.String(32), nullable=False),
        _device_fk(),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("message", sa.String(256), nullable=False),
        sa.Column("opened_at", UTC_DATETIME, nullable=False),
        sa.Column("resolved_at", UTC_DATETIME, nullable=True),
    )
    _index("alert", "device_id")
    op.create_index("ix_alert_open", "alert", ["resolved_at", "rule", "device_id"])
    op.create_table(
        "device_config",
        _device_fk(primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False),
        sa.Column("error", sa.String(200), nullable=True),
    )
    op.create_table(
        "command",
        sa.Column("id", sa.String(40), primary_key=True),
        _device_fk(),
        sa.Column("cmd", sa.String(32), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("acked_at", UTC_DATETIME, nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.String(200), nullable=True),
    )
    _index("command", "device_id")
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("site_ids", sa.JSON(), nullable=True),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("last_used_at", UTC_DATETIME, nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("name", name="uq_api_token_name"),
        sa.UniqueConstraint("hash", name="uq_api_token_hash"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", BIG_ID, primary_key=True),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("who", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("entity", sa.String(32), nullable=False),
        sa.Column("entity_id", sa.String(64), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
    )
    _index("audit_log", "at")
    _backfill_rollups()


def _move_devices_into_rooms() -> None:
    conn = op.get_bind()
    conn.execute(sa.text("UPDATE device SET lifecycle = 'active' WHERE status <> 'provisioned'"))
    placed = conn.execute(sa.text("SELECT DISTINCT site_id, room FROM device")).all()
    floors: dict[int, int] = {}
    for site_id, room in placed:
        if site_id not in floors:
            building = conn.execute(
                sa.text(
                    "INSERT INTO building (site_id, slug, name) VALUES (:s, 'main', 'main') RETURNING id"
                ),
                {"s": site_id},
            ).scalar_one()
            floors[site_id] = conn.execute(
                sa.text("INSERT INTO floor (building_id, name, level) VALUES (:b, '0', 0) RETURNING id"),
                {"b": building},
            ).scalar_one()
        room_id = conn.execute(
            sa.text("INSERT INTO room (floor_id, name) VALUES (:f, :n) RETURNING id"),
            {"f": floors[site_id], "n": room},
        ).scalar_one()
        conn.execute(
            sa.text("UPDATE device SET room_id = :r WHERE site_id = :s AND room = :n"),
            {"r": room_id, "s": site_id, "n": room},
        )


def _backfill_rollups() -> None:
    conn = op.get_bind()
    reading = sa.table(
        "reading",
        sa.column("device_id"),
        sa.column("name"),
        sa.column("value"),
        sa.column("ts", UTC_DATETIME),
    )
    rows = conn.execute(sa.select(reading.c.device_id, reading.c.name, reading.c.value, reading.c.ts)).all()
    if not rows:
        return
    from datetime import UTC

    aggs = aggregate((d, n, v, ts if ts.tzinfo else ts.replace(tzinfo=UTC)) for d, n, v, ts in rows)
    rollup = sa.table(
        "rollup",
        *(sa.column(c) for c in ("device_id", "name", "resolution", "count", "sum", "min", "max", "last")),
        sa.column("bucket", UTC_DATETIME),
        sa.column("last_ts", UTC_DATETIME),
    )
    conn.execute(
        rollup.insert(),
        [
            {"device_id": d, "name": n, "resolution": r, "bucket": b, **vars(a)}
            for (d, n, r, b), a in aggs.items()
        ],
    )


def downgrade() -> None:
    for table in ("audit_log", "api_token", "command", "device_config", "alert", "channel", "rollup"):
        op.drop_table(table)
    op.drop_table("device_sensor")
    op.add_column("device", sa.Column("room", sa.String(64), nullable=False, server_default=""))
    op.execute(
        "UPDATE device SET room = COALESCE((SELECT name FROM room WHERE room.id = device.room_id), '')"
    )
    op.drop_index("ix_device_room_id", table_name="device")
    for column in ("boots_since", "boots_base", "sleep_s", "config_version", "mode", "tags"):
        op.drop_column("device", column)
    for column in ("replaced_by", "lifecycle", "room_id"):
        op.drop_column("device", column)
    for table in ("room", "zone", "floor", "building"):
        op.drop_table(table)
