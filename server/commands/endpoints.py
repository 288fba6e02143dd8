"""Routes for commands: list, acknowledge."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from rlkeel.client.schemas import Command, CommandAck, CommandCreate, CommandDecision, CommandStatus
from rlkeel.server.api.deps import (
    CommandId,
    OperatorRole,
    RunId,
    SessionDep,
    TrainerOrOperator,
    TrainerRole,
)
from rlkeel.server.api.errors import Conflict
from rlkeel.server.audit.service import record
from rlkeel.server.commands import service
from rlkeel.server.commands.params import validate_params
from rlkeel.server.runs.service import get_run

router = APIRouter(tags=["commands"])


@router.get("/v1/runs/{run}/commands", response_model=list[Command])
def list_commands(
    run: RunId,
    session: SessionDep,
    _: TrainerOrOperator,
    status: Annotated[list[CommandStatus] | None, Query(description="Only these statuses")] = None,
    after: Annotated[int | None, Query(ge=0, le=2**62, description="Only ids after this")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 200,
) -> list[Command]:
    """Commands of a run, oldest first."""
    get_run(session, run)
    rows = service.list_for_run(
        session, run, statuses=[s.value for s in status] if status else None, after=after,
        limit=limit,
    )  # fmt: skip
    return [service.to_schema(c) for c in rows]


@router.post("/v1/commands/{id}/ack", response_model=Command)
def ack_command(id: CommandId, body: CommandAck, session: SessionDep, principal: TrainerRole) -> Command:
    """The trainer reports what it did with a command: applied, rejected or failed."""
    command = service.get(session, id, for_update=True)
    service.acknowledge(
        session, command, status=body.status.value, step=body.step, detail=body.detail,
        actor=principal.actor,
    )  # fmt: skip
    if body.status.value == "applied" and command.kind == "switch_algorithm":
        run = get_run(session, command.run_id, for_update=True)
        run.current_algorithm = str(command.params.get("to", run.current_algorithm))
    session.flush()
    return service.to_schema(command)


@router.post("/v1/runs/{run}/commands", response_model=Command, status_code=201)
def issue_command(
    run: RunId, body: CommandCreate, session: SessionDep, principal: OperatorRole
) -> Command:
    """Issue a command by hand (an override): it goes out at the next verdict, whatever the mode."""
    record_ = get_run(session, run, for_update=True)
    if record_.status != "running":
        raise Conflict(f"run {run} is {record_.status}", fields=["run"])
    params = validate_params(body.kind.value, body.params)
    command = service.issue(
        session, run_id=run, kind=body.kind.value, params=params,
        reason={"text": body.reason or "issued by an operator", "finding_ids": []},
        origin="operator", held=False, effective_step=body.effective_step,
        actor=principal.actor,
    )  # fmt: skip
    after = service.to_schema(command).model_dump(mode="json")
    record(session, principal, action="command.issue", target_type="command",
           target_id=command.id, before=None, after=after)  # fmt: skip
    return service.to_schema(command)


def _decide(command_id: int, to: str, body: CommandDecision | None, session: SessionDep,
            principal: OperatorRole) -> Command:  # fmt: skip
    command = service.get(session, command_id, for_update=True)
    before = service.to_schema(command).model_dump(mode="json")
    note = body.note if body else None
    service.transition(session, command, to, actor=principal.actor, detail=note)
    session.flush()
    after = service.to_schema(command).model_dump(mode="json")
    record(session, principal, action=f"command.{'approve' if to == 'approved' else 'reject'}",
           target_type="command", target_id=command.id, before=before, after=after)  # fmt: skip
    return service.to_schema(command)


@router.post("/v1/commands/{id}/approve", response_model=Command)
def approve_command(
    id: CommandId, session: SessionDep, principal: OperatorRole,
    body: CommandDecision | None = None,
) -> Command:
    """Approve a held command (approval mode): it goes out at the next verdict."""
    return _decide(id, "approved", body, session, principal)


@router.post("/v1/commands/{id}/reject", response_model=Command)
def reject_command(
    id: CommandId, session: SessionDep, principal: OperatorRole,
    body: CommandDecision | None = None,
) -> Command:
    """Refuse a held command: it never goes out."""
    return _decide(id, "refused", body, session, principal)
