"""Route for the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from rlkeel.client.schemas import AuditRead
from rlkeel.server.api.deps import OperatorRole, SessionDep
from rlkeel.server.audit import service

router = APIRouter(tags=["audit"])


@router.get("/v1/audit", response_model=list[AuditRead])
def list_audit(
    session: SessionDep,
    _: OperatorRole,
    target_type: Annotated[
        str | None, Query(max_length=32, description="run, command, finding, webhook")
    ] = None,
    target_id: Annotated[str | None, Query(max_length=64, description="Id of the target")] = None,
    after: Annotated[
        int | None, Query(ge=0, le=2**62, description="Only entries after this id")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 200,
) -> list[AuditRead]:
    """Who did what, when, with the state before and after; oldest first."""
    rows = service.list_entries(session, target_type=target_type, target_id=target_id,
                                after=after, limit=limit)  # fmt: skip
    return [AuditRead.model_validate(r) for r in rows]
