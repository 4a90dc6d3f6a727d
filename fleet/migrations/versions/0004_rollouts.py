"""Releases and rollouts: the release bundles the fleet serves, rollouts, their waves and targets.

Revision ID: 0004
Revises: 0003
Create Date: 2026-02-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "release",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("arch", sa.String(16), nullable=False),
        sa.Column("rollback", sa.Boolean(), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("path", sa.String(96), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.UniqueConstraint("version", "arch", name="uq_release_version_arch"),
    )
    op.create_table(
        "rollout",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "release_id", sa.Integer(), sa.ForeignKey("release.id", ondelete="RESTRICT"), nullable=False
        ),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(256), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
    )
    op.create_index("ix_rollout_release_id", "rollout", ["release_id"])
    op.create_table(
        "rollout_wave",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "rollout_id", sa.Integer(), sa.ForeignKey("rollout.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=True),
        sa.Column("done_at", UTC_DATETIME, nullable=True),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
        sa.Column("gate", sa.JSON(), nullable=True),
        sa.UniqueConstraint("rollout_id", "index", name="uq_rollout_wave_index"),
    )
    op.create_index("ix_rollout_wave_rollout_id", "rollout_wave", ["rollout_id"])
    op.create_table(
        "rollout_target",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "rollout_id", sa.Integer(), sa.ForeignKey("rollout.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("device_id", sa.String(32), sa.ForeignKey("device.id", ondelete="CASCADE"), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("node_state", sa.String(16), nullable=True),
        sa.Column("progress", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("from_version", sa.String(32), nullable=True),
        sa.Column("running", sa.String(32), nullable=True),
        sa.Column("channels", sa.JSON(), nullable=False),
        sa.Column("not_before", UTC_DATETIME, nullable=True),
        sa.Column("offered_at", UTC_DATETIME, nullable=True),
        sa.Column("updated_at", UTC_DATETIME, nullable=True),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
        sa.UniqueConstraint("rollout_id", "device_id", name="uq_rollout_target_device"),
    )
    op.create_index("ix_rollout_target_rollout_id", "rollout_target", ["rollout_id"])
    op.create_index("ix_rollout_target_device_id", "rollout_target", ["device_id"])


def downgrade() -> None:
    op.drop_table("rollout_target")
    op.drop_table("rollout_wave")
    op.drop_table("rollout")
    op.drop_table("release")
