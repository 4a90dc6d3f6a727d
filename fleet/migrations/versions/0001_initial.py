"""Initial schema: site, device, reading, reject.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "site",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("slug", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.UniqueConstraint("slug", name="uq_site_slug"),
    )
    op.create_table(
        "device",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("site_id", sa.Integer(), sa.ForeignKey("site.id"), nullable=False),
        sa.Column("room", sa.String(64), nullable=False),
        sa.Column("board", sa.String(32), nullable=False),
        sa.Column("fw", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_seen", UTC_DATETIME, nullable=True),
        sa.Column("last_state_at", UTC_DATETIME, nullable=True),
        sa.Column("boot", sa.Integer(), nullable=True),
        sa.Column("reset", sa.String(24), nullable=True),
        sa.Column("last_health", sa.JSON(), nullable=True),
        sa.Column("stored_seq", sa.BigInteger(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
    )
    op.create_index("ix_device_site_id", "device", ["site_id"])
    op.create_table(
        "reading",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("device_id", sa.String(32), sa.ForeignKey("device.id"), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("unit", sa.String(16), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("ts", UTC_DATETIME, nullable=False),
        sa.Column("received_at", UTC_DATETIME, nullable=False),
        sa.UniqueConstraint("device_id", "seq", "name", name="uq_reading_device_seq_name"),
    )
    op.create_index("ix_reading_device_name_ts", "reading", ["device_id", "name", "ts"])
    op.create_table(
        "reject",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("topic", sa.String(256), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("payload", sa.String(256), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("reject")
    op.drop_index("ix_reading_device_name_ts", table_name="reading")
    op.drop_table("reading")
    op.drop_index("ix_device_site_id", table_name="device")
    op.drop_table("device")
    op.drop_table("site")
