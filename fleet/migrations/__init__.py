"""Alembic migrations of the fleet database, applied by `fleet.db.upgrade`."""
