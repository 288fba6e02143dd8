"""The audit log: who did what, when, with the state before and after."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlkeel.server.api.deps import Principal
from rlkeel.server.db.models import AuditEntry


def record(
    session: Session,
    principal: Principal,
    *,
    action: str,
    target_type: str,
    target_id: str | int,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    session.add(AuditEntry(actor=principal.actor, role=principal.role.value, action=action,
                           target_type=target_type, target_id=str(target_id), before=before,
                           after=after))  # fmt: skip


def list_entries(
    session: Session,
    *,
    target_type: str | None,
    target_id: str | None,
    after: int | None,
    limit: int,
) -> list[AuditEntry]:
    stmt = select(AuditEntry)
    if target_type is not None:
        stmt = stmt.where(AuditEntry.target_type == target_type)
    if target_id is not None:
        stmt = stmt.where(AuditEntry.target_id == target_id)
    if after is not None:
        stmt = stmt.where(AuditEntry.id > after)
    return list(session.scalars(stmt.order_by(AuditEntry.id).limit(limit)))
