"""Routes for commands: list, acknowledge."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from rlkeel.client.schemas import Command, CommandAck, CommandStatus
from rlkeel.server.api.deps import SessionDep, TrainerOrOperator, TrainerRole
from rlkeel.server.commands import service
from rlkeel.server.runs.service import get_run

router = APIRouter(tags=["commands"])


@router.get("/v1/runs/{run}/commands", response_model=list[Command])
def list_commands(
    run: str,
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
def ack_command(
    id: int, body: CommandAck, session: SessionDep, principal: TrainerRole
) -> Command:
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
