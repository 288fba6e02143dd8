"""Routes for runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from rlkeel.client.schemas import Run, RunCreate, RunStatus
from rlkeel.server.api.deps import AnyRole, SessionDep, TrainerRole
from rlkeel.server.runs import service

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
def get_run(run: str, session: SessionDep, _: AnyRole) -> Run:
    """One run, with its current algorithm, automation mode and status."""
    return service.to_schema(service.get_run(session, run))
