"""Runs: registration, lookup, listing."""

from __future__ import annotations

import uuid

from sqlalchemy import bindparam, select, update
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


# Built once, run with parameters: every report runs both, and building a statement (with its
# cache key) costs about as much as executing it.
_GET_RUN = select(RunRecord).where(RunRecord.id == bindparam("run_id"))
_GET_RUN_FOR_UPDATE = _GET_RUN.with_for_update()
_RECORD_REPORT = (
    update(RunRecord.__table__)
    .where(RunRecord.__table__.c.id == bindparam("run_id"))
    .values(last_step=bindparam("new_last_step"), last_report_at=bindparam("now"))
)


def get_run(session: Session, run_id: str, *, for_update: bool = False) -> RunRecord:
    stmt = _GET_RUN_FOR_UPDATE if for_update else _GET_RUN
    run = session.scalars(stmt, {"run_id": run_id}).one_or_none()
    if run is None:
        raise NotFound(f"no run with id {run_id!r}", fields=["run"])
    return run


def record_report(session: Session, run: RunRecord, step: int) -> None:
    """Note a stored report on the (locked) run row: its last step and when. A Core UPDATE on
    the session's connection, cheaper than the ORM's flush; `run` is kept in step with it."""
    last_step = step if run.last_step is None else max(run.last_step, step)
    now = utcnow()
    session.connection().execute(
        _RECORD_REPORT, {"run_id": run.id, "new_last_step": last_step, "now": now}
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
