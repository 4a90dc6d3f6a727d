"""Site calendars (when a building is occupied) and start-up access (metric scope, broker account).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("site") as batch:
        batch.add_column(sa.Column("calendar", sa.JSON(), nullable=True))
    with op.batch_alter_table("api_token") as batch:
        batch.add_column(sa.Column("metrics", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("broker_hash", sa.String(160), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_token") as batch:
        batch.drop_column("broker_hash")
        batch.drop_column("metrics")
    with op.batch_alter_table("site") as batch:
        batch.drop_column("calendar")
