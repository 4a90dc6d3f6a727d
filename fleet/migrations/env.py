"""Alembic environment: runs on the connection `fleet.db.upgrade` hands over (no alembic.ini)."""

from alembic import context
from sqlmodel import SQLModel

import fleet.models  # noqa: F401  (registers the tables on SQLModel.metadata)

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    # SQLite cannot ALTER most things: later revisions rebuild tables in batch mode there.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
