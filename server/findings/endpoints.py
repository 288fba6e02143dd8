"""Routes for detector findings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from rlkeel.client.schemas import Finding, FindingStatus, Severity
from rlkeel.server.api.deps import AnyRole, SessionDep
from rlkeel.server.db.models import FindingRecord
from rlkeel.server.runs.service import get_run
from rlkeel.server.steps.values import overlay
from sqlalchemy import select

router = APIRouter(tags=["findings"])


def to_schema(f: FindingRecord) -> Finding:
    values = overlay({"value": f.value, "baseline": f.baseline, "threshold": f.threshold},
                     f.nonfinite or {})  # fmt: skip
    return Finding(
        id=f.id, run_id=f.run_id, step=f.step, detector=f.detector, severity=f.severity,
        metric=f.metric, message=f.message, sample_ids=f.sample_ids or [], status=f.status,
        snoozed_until=f.snoozed_until, created_at=f.created_at, **values,
    )  # fmt: skip


@router.get("/v1/runs/{run}/findings", response_model=list[Finding])
def list_findings(
    run: str,
    session: SessionDep,
    _: AnyRole,
    severity: Annotated[Severity | None, Query(description="Only this severity")] = None,
    status: Annotated[FindingStatus | None, Query(description="Only this status")] = None,
    after: Annotated[int | None, Query(ge=0, le=2**62, description="Only ids after this")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 200,
) -> list[Finding]:
    """Detector findings of a run, with their evidence, oldest first."""
    get_run(session, run)
    stmt = select(FindingRecord).where(FindingRecord.run_id == run)
    if severity is not None:
        stmt = stmt.where(FindingRecord.severity == severity.value)
    if status is not None:
        stmt = stmt.where(FindingRecord.status == status.value)
    if after is not None:
        stmt = stmt.where(FindingRecord.id > after)
    return [to_schema(f) for f in session.scalars(stmt.order_by(FindingRecord.id).limit(limit))]
