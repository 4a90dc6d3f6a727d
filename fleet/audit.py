"""The audit log: every write through the API or the CLI, who did it, and the entity before and after."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, SQLModel, col, select

from fleet.models import AuditLog


def snapshot(entity: SQLModel | None) -> dict[str, Any] | None:
    return None if entity is None else entity.model_dump(mode="json")


def record(
    session: Session,
    who: str,
    action: str,
    entity: str,
    entity_id: object,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Add an entry to the caller's transaction: it commits (or not) with the write it describes."""
    session.add(
        AuditLog(who=who, action=action, entity=entity, entity_id=str(entity_id), before=before, after=after)
    )


def recent(session: Session, limit: int = 100, entity: str | None = None) -> list[AuditLog]:
    """The latest `limit` entries, oldest first."""
    query = select(AuditLog).order_by(col(AuditLog.id).desc()).limit(limit)
    if entity:
        query = query.where(AuditLog.entity == entity)
    return list(reversed(session.exec(query).all()))
