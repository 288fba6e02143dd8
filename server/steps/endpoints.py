"""Routes for step reports, step history and samples."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from rlkeel.client.schemas import Page, Phase, SampleRead, StepRead, StepReport, Verdict
from rlkeel.server.api.deps import AnyRole, SessionDep, SettingsDep, TrainerRole
from rlkeel.server.runs.service import get_run
from rlkeel.server.steps import store
from rlkeel.server.steps.ingest import ingest_report

router = APIRouter(prefix="/v1/runs/{run}", tags=["steps"])


@router.post("/steps", response_model=Verdict)
def post_step(
    run: str,
    report: StepReport,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: TrainerRole,
) -> Verdict:
    """Report a step; answers the verdict. A repeat of (step, phase) returns the stored one."""
    verdict, created = ingest_report(
        session, run, report, max_samples=settings.max_samples_per_report,
        actor=principal.actor,
    )  # fmt: skip
    response.status_code = 201 if created else 200
    return verdict


@router.get("/steps", response_model=Page[StepRead])
def list_steps(
    run: str,
    session: SessionDep,
    _: AnyRole,
    after: Annotated[int | None, Query(ge=-1, le=2**62, description="Only steps after this one")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Steps per page")] = 100,
    phase: Annotated[Phase | None, Query(description="Only this phase")] = None,
) -> Page[StepRead]:
    """Step history in step order, both phases; page with `after=next_after`."""
    get_run(session, run)
    rows, next_after = store.list_steps(
        session, run, after=after, limit=limit, phase=phase.value if phase else None
    )
    return Page[StepRead](items=[store.step_to_schema(r) for r in rows], next_after=next_after)


@router.get("/samples", response_model=list[SampleRead])
def list_samples(
    run: str,
    session: SessionDep,
    _: AnyRole,
    step: Annotated[int, Query(ge=0, le=2**62, description="The step")],
) -> list[SampleRead]:
    """Per-sample rows of one step, with their detector flags."""
    get_run(session, run)
    return store.list_samples(session, run, step)
