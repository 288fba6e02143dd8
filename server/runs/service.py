"""Runs: registration, lookup, listing."""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from rlkeel.client.schemas import ModelInfo, Run, RunCreate
from rlkeel.server.api.errors import Conflict, NotFound
from rlkeel.server.db.base import utcnow
from rlkeel.server.db.models import Run as RunRecord


def to_schema(run: RunRecord) -> Run:
    return Run(
        id=run.id,
        name=run.name,
        project=run.project,
        algorithm=run.algorithm,
        current_algorithm=run.current_algorithm,
        model=ModelInfo(name=run.model_name, parameter_count=run.model_parameter_count,
                        moe=run.model_moe),
        config=run.config,
        world_size=run.world_size,
        verifiable_rewards=run.verifiable_rewards,
        automation=run.automation,
        status=run.status,
        last_step=run.last_step,
        created_at=run.created_at,
        last_report_at=run.last_report_at,
    )  # fmt: skip


def create_run(session: Session, body: RunCreate) -> RunRecord:
    run = RunRecord(
        id=str(uuid.uuid4()),
        name=body.name,
        project=body.project,
        algorithm=body.algorithm.value,
        current_algorithm=body.algorithm.value,
        model_name=body.model.name,
        model_parameter_count=body.model.parameter_count,
        model_moe=body.model.moe,
        config=body.config,
        world_size=body.world_size,
        verifiable_rewards=body.verifiable_rewards,
        automation=body.automation.value,
        status="running",
    )
    session.add(run)
    session.flush()
    return run


def end_run(run: RunRecord, status: str) -> bool:
    """Move a running run to its final `status`; False when it already has it (a repeat)."""
    if run.status == status:
        return False
    if run.status != "running":
        raise Conflict(f"run {run.id} is already {run.status}; it cannot become {status}",
                       fields=["status"])  # fmt: skip
    run.status = status
    return True


def get_run(session: Session, run_id: str, *, for_update: bool = False) -> RunRecord:
    stmt = select(RunRecord).where(RunRecord.id == run_id)
    if for_update:
        stmt = stmt.with_for_update()
    run = session.scalars(stmt).one_or_none()
    if run is None:
        raise NotFound(f"no run with id {run_id!r}", fields=["run"])
    return run


def record_report(session: Session, run: RunRecord, step: int) -> None:
    """Note a stored report on the (locked) run row: its last step and when. A Core UPDATE on
    the session's connection, cheaper than the ORM's flush; `run` is kept in step with it."""
    last_step = step if run.last_step is None else max(run.last_step, step)
    now = utcnow()
    table = RunRecord.__table__
    session.connection().execute(
        update(table).where(table.c.id == run.id).values(last_step=last_step, last_report_at=now)
    )
    set_committed_value(run, "last_step", last_step)
    set_committed_value(run, "last_report_at", now)


def list_runs(
    session: Session, *, project: str | None, status: str | None, limit: int, offset: int
) -> list[RunRecord]:
    stmt = select(RunRecord).order_by(RunRecord.created_at.desc(), RunRecord.id)
    if project is not None:
        stmt = stmt.where(RunRecord.project == project)
    if status is not None:
        stmt = stmt.where(RunRecord.status == status)
    return list(session.scalars(stmt.limit(limit).offset(offset)))
