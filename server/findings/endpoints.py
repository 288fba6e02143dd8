"""Routes for detector findings."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from rlkeel.client.schemas import Finding, FindingAck, FindingStatus, Severity
from rlkeel.server.api.deps import AnyRole, FindingId, OperatorRole, RunId, SessionDep
from rlkeel.server.api.errors import NotFound
from rlkeel.server.audit.service import record
from rlkeel.server.db.base import utcnow
from rlkeel.server.db.models import FindingRecord
from rlkeel.server.runs.service import get_run
from rlkeel.server.steps.values import overlay

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
    run: RunId,
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


@router.post("/v1/findings/{id}/ack", response_model=Finding)
def ack_finding(
    id: FindingId, session: SessionDep, principal: OperatorRole, body: FindingAck | None = None
) -> Finding:
    """Acknowledge a finding; with `snooze_seconds`, silence its detector for the run that long."""
    finding = session.scalars(
        select(FindingRecord).where(FindingRecord.id == id).with_for_update()
    ).one_or_none()
    if finding is None:
        raise NotFound(f"no finding with id {id}", fields=["id"])
    before = to_schema(finding).model_dump(mode="json")
    if body is not None and body.snooze_seconds:
        finding.status = "snoozed"
        finding.snoozed_until = utcnow() + timedelta(seconds=body.snooze_seconds)
    else:
        finding.status = "acknowledged"
    session.flush()
    after = to_schema(finding).model_dump(mode="json")
    if body is not None and body.note:
        after["note"] = body.note
    record(session, principal, action="finding.ack", target_type="finding", target_id=id,
           before=before, after=after)  # fmt: skip
    return to_schema(finding)
