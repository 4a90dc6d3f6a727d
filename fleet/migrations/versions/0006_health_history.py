"""Health history: each node's health messages, for the device page and its API route.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "health",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("device_id", sa.String(32), sa.ForeignKey("device.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("uptime", sa.BigInteger(), nullable=False),
        *(
            sa.Column(name, sa.Integer(), nullable=True)
            for name in (
                "heap_free",
                "heap_min",
                "rssi",
                "reconnects",
                "outbox",
                "outbox_flash",
                "outbox_dropped",
                "loop_lag_ms",
                "boot",
            )
        ),
        sa.Column("reset", sa.String(24), nullable=True),
        sa.Column("mode", sa.String(8), nullable=True),
        sa.Column("faults", sa.JSON(), nullable=True),
        sa.UniqueConstraint("device_id", "boot", "uptime", name="uq_health_device_boot_uptime"),
    )
    op.create_index("ix_health_device_at", "health", ["device_id", "at"])
    op.create_index("ix_health_at", "health", ["at"])


def downgrade() -> None:
    op.drop_index("ix_health_at", table_name="health")
    op.drop_index("ix_health_device_at", table_name="health")
    op.drop_table("health")
