"""Provisioning: device broker credentials (hashes only), site Wi-Fi, device name, where a device
was provisioned from, and whether a site file declared it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-01-15
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "site_wifi",
        sa.Column("site_id", sa.Integer(), sa.ForeignKey("site.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("ssid", sa.String(64), nullable=False),
        sa.Column("password", sa.String(128), nullable=False),
    )
    op.create_table(
        "device_credential",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("device_id", sa.String(32), sa.ForeignKey("device.id", ondelete="CASCADE"), nullable=False),
        sa.Column("hash", sa.String(256), nullable=False),
        sa.Column("issued_for", sa.String(256), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("revoked_at", UTC_DATETIME, nullable=True),
    )
    op.create_index("ix_device_credential_device_id", "device_credential", ["device_id"])
    # Plain columns: SQLite adds them in place (no rebuild of device, which others reference).
    op.add_column("device", sa.Column("name", sa.String(64), nullable=True))
    op.add_column("device", sa.Column("provisioned_from", sa.String(256), nullable=True))
    op.add_column("device", sa.Column("declared", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    for column in ("declared", "provisioned_from", "name"):
        op.drop_column("device", column)
    op.drop_table("device_credential")
    op.drop_table("site_wifi")
