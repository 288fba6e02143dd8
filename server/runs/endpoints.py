"""Routes for runs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from rlkeel.client.schemas import (
    AutomationUpdate,
    FreeJSON,
    Run,
    RunCreate,
    RunStatus,
    RunStatusUpdate,
)
from rlkeel.server.api.deps import AnyRole, OperatorRole, RunId, SessionDep, TrainerRole
from rlkeel.server.audit.service import record
from rlkeel.server.runs import service
from rlkeel.server.runs.policy import effective_policy, validate_policy

router = APIRouter(prefix="/v1/runs", tags=["runs"])


@router.post("", status_code=201, response_model=Run)
def register_run(body: RunCreate, session: SessionDep, _: TrainerRole) -> Run:
    """Register a training run; the answer carries its id."""
    return service.to_schema(service.create_run(session, body))


@router.get("", response_model=list[Run])
def list_runs(
    session: SessionDep,
    _: AnyRole,
    project: Annotated[str | None, Query(max_length=200, description="Only this project")] = None,
    status: Annotated[RunStatus | None, Query(description="Only runs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9, description="Rows to skip")] = 0,
) -> list[Run]:
    """List runs, newest first."""
    runs = service.list_runs(
        session, project=project, status=status.value if status else None, limit=limit,
        offset=offset,
    )  # fmt: skip
    return [service.to_schema(r) for r in runs]


@router.get("/{run}", response_model=Run)
def get_run(run: RunId, session: SessionDep, _: AnyRole) -> Run:
    """One run, with its current algorithm, automation mode and status."""
    return service.to_schema(service.get_run(session, run))


@router.put("/{run}/automation", response_model=Run)
def set_automation(
    run: RunId, body: AutomationUpdate, session: SessionDep, principal: OperatorRole
) -> Run:
    """Set the automation mode: `auto`, `approve` (commands held for an operator) or `observe`."""
    record_ = service.get_run(session, run, for_update=True)
    before = {"automation": record_.automation}
    record_.automation = body.mode.value
    record(session, principal, action="run.automation", target_type="run", target_id=run,
           before=before, after={"automation": record_.automation})  # fmt: skip
    session.flush()
    return service.to_schema(record_)


@router.put("/{run}/status", response_model=Run)
def set_status(run: RunId, body: RunStatusUpdate, session: SessionDep, principal: TrainerRole) -> Run:
    """Mark how the run ended (`finished`, `stopped`, `failed`); it then takes no more reports.
    Setting the status it already has is a no-op; ending a run that ended otherwise is a 409."""
    record_ = service.get_run(session, run, for_update=True)
    before = {"status": record_.status}
    if service.end_run(record_, body.status):
        record(session, principal, action="run.status", target_type="run", target_id=run,
               before=before, after={"status": record_.status, "detail": body.detail})  # fmt: skip
    session.flush()
    return service.to_schema(record_)


@router.get("/{run}/policy", response_model=dict[str, Any])
def get_policy(run: RunId, session: SessionDep, _: AnyRole) -> dict[str, Any]:
    """The run's policy in full: detector thresholds, enabled detectors, bounds on actions."""
    return effective_policy(service.get_run(session, run)).model_dump(mode="json")


@router.put("/{run}/policy", response_model=dict[str, Any])
def put_policy(
    run: RunId,
    session: SessionDep,
    principal: OperatorRole,
    body: Annotated[FreeJSON, Body(description="A policy; missing fields take defaults")],
) -> dict[str, Any]:
    """Replace the run's policy (validated; missing fields take their defaults)."""
    record_ = service.get_run(session, run, for_update=True)
    policy = validate_policy(body).model_dump(mode="json")
    before = effective_policy(record_).model_dump(mode="json")
    record_.policy = policy
    record(session, principal, action="policy.replace", target_type="run", target_id=run,
           before=before, after=policy)  # fmt: skip
    return policy
