"""Routes for step reports, step history and samples."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from rlkeel.client.schemas import Page, Phase, SampleRead, StepRead, StepReport, Verdict
from rlkeel.server.api.body import parse_json_body
from rlkeel.server.api.deps import AnyRole, RunId, SessionDep, TrainerRole
from rlkeel.server.runs.service import get_run
from rlkeel.server.steps import store
from rlkeel.server.steps.ingest import ingest_report

router = APIRouter(prefix="/v1/runs/{run}", tags=["steps"])


@router.post(
    "/steps",
    response_model=Verdict,
    status_code=201,
    responses={200: {"model": Verdict, "description": "A repeat: the stored verdict"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/StepReport"}}
            },
        }
    },
)
async def post_step(
    run: RunId,
    request: Request,
    principal: TrainerRole,
) -> Response:
    """Report a step; answers the verdict. A repeat of (step, phase) returns the stored one.

    The body is parsed by pydantic-core straight from bytes (no intermediate dicts): this is
    the hot path of the service.
    """
    started = time.perf_counter()
    app = request.app
    metrics = app.state.metrics
    report = None
    try:
        report = parse_json_body(StepReport, await request.body())
        verdict, created = await run_in_threadpool(
            _ingest_in_session, app, run, report, principal.actor
        )
    except Exception:
        if metrics is not None:
            phase = report.phase.value if report is not None else "unparsed"
            metrics.observe_report_error(phase, time.perf_counter() - started)
        raise
    if metrics is not None:
        metrics.observe_report(report, verdict, created=created,
                               seconds=time.perf_counter() - started)  # fmt: skip
    return Response(
        verdict.model_dump_json(), status_code=201 if created else 200,
        media_type="application/json",
    )  # fmt: skip


def _ingest_in_session(app: Any, run: str, report: StepReport, actor: str) -> tuple[Verdict, bool]:
    settings = app.state.settings
    if report.samples:
        app.state.refitter.warm()
    with app.state.session_factory() as session:
        try:
            verdict, created, refit = ingest_report(
                session,
                run,
                report,
                max_samples=settings.max_samples_per_report,
                actor=actor,
                state_cache=app.state.analysis_cache,
            )
            session.commit()
        except BaseException:
            session.rollback()
            raise
    if refit is not None:
        app.state.refitter.submit(refit)
    return verdict, created


@router.get("/steps", response_model=Page[StepRead])
def list_steps(
    run: RunId,
    session: SessionDep,
    _: AnyRole,
    after: Annotated[
        int | None, Query(ge=-1, le=2**62, description="Only steps after this one")
    ] = None,
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
    run: RunId,
    session: SessionDep,
    _: AnyRole,
    step: Annotated[int, Query(ge=0, le=2**62, description="The step")],
) -> list[SampleRead]:
    """Per-sample rows of one step, with their detector flags."""
    get_run(session, run)
    return store.list_samples(session, run, step)
