"""Commands: issuing, delivering in verdicts, acknowledging; every transition is recorded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from rlkeel.client.schemas import Command, CommandStatus
from rlkeel.server.api.errors import Conflict, NotFound
from rlkeel.server.db.base import utcnow
from rlkeel.server.db.models import CommandEvent, CommandRecord
from rlkeel.server.webhooks import service as webhooks
from rlkeel.server.webhooks.events import EventType

# Allowed transitions (DESIGN §3): pending → delivered → applied|rejected|failed,
# held → approved|refused, and anything still open → expired.
_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"delivered", "applied", "rejected", "failed", "expired"}),
    "delivered": frozenset({"applied", "rejected", "failed", "expired"}),
    "held": frozenset({"approved", "refused", "expired"}),
    "approved": frozenset({"delivered", "applied", "rejected", "failed", "expired"}),
}
TERMINAL = frozenset({"applied", "rejected", "failed", "refused", "expired"})
OPEN_FOR_DELIVERY = ("pending", "approved")
_ACK_EVENTS = {"applied": EventType.command_applied, "failed": EventType.command_failed,
               "rejected": EventType.command_rejected}  # fmt: skip


def to_schema(c: CommandRecord) -> Command:
    return Command.model_validate(c)


def transition(
    session: Session, command: CommandRecord, to: str, *, actor: str, detail: str | None = None
) -> None:
    if to not in _TRANSITIONS.get(command.status, frozenset()):
        raise Conflict(
            f"command {command.id} is {command.status}; it cannot become {to}", fields=["status"]
        )
    session.add(CommandEvent(command_id=command.id, from_status=command.status, to_status=to,
                             actor=actor, detail=detail))  # fmt: skip
    command.status = to
    command.updated_at = utcnow()
    if detail is not None:
        command.detail = detail


def issue(
    session: Session,
    *,
    run_id: str,
    kind: str,
    params: dict[str, Any],
    reason: dict[str, Any],
    origin: str,
    held: bool,
    effective_step: int | None,
    actor: str,
) -> CommandRecord:
    status = "held" if held else "pending"
    command = CommandRecord(run_id=run_id, kind=kind, params=params, reason=reason, origin=origin,
                            status=status, effective_step=effective_step)  # fmt: skip
    session.add(command)
    session.flush()
    session.add(CommandEvent(command_id=command.id, from_status=None, to_status=status,
                             actor=actor))  # fmt: skip
    webhooks.announce_command(session, command, EventType.command_issued)
    return command


def _due(run_id: Any, step: Any) -> tuple[Any, ...]:
    return (
        CommandRecord.run_id == run_id,
        CommandRecord.status.in_(OPEN_FOR_DELIVERY),
        or_(CommandRecord.effective_step.is_(None), CommandRecord.effective_step <= step),
    )


def due_count(run_id: Any, step: Any) -> Any:
    """How many commands `deliver_due` would deliver now, as a scalar subquery (to read in
    one statement with other look-ups; zero lets ingest skip `deliver_due`); the arguments
    may be bind parameters."""
    return (
        select(func.count()).select_from(CommandRecord).where(*_due(run_id, step)).scalar_subquery()
    )


def deliver_due(session: Session, run_id: str, step: int, *, actor: str) -> list[CommandRecord]:
    """Pending (or approved) commands due at `step`, marked delivered, oldest first."""
    stmt = (
        select(CommandRecord)
        .where(*_due(run_id, step))
        .order_by(CommandRecord.id)
        .with_for_update()
    )
    due = list(session.scalars(stmt))
    for command in due:
        transition(session, command, "delivered", actor=actor, detail=f"in verdict of step {step}")
    return due


def get(session: Session, command_id: int, *, for_update: bool = False) -> CommandRecord:
    stmt = select(CommandRecord).where(CommandRecord.id == command_id)
    if for_update:
        stmt = stmt.with_for_update()
    command = session.scalars(stmt).one_or_none()
    if command is None:
        raise NotFound(f"no command with id {command_id}", fields=["id"])
    return command


def acknowledge(
    session: Session,
    command: CommandRecord,
    *,
    status: str,
    step: int,
    detail: str | None,
    actor: str,
) -> bool:
    """Record the trainer's ack. A repeat of the same ack is a no-op (returns False)."""
    if command.status == status and command.applied_step == step:
        return False
    transition(session, command, status, actor=actor, detail=detail)
    command.applied_step = step
    if status in _ACK_EVENTS:
        webhooks.announce_command(session, command, _ACK_EVENTS[status])
    return True


def list_for_run(
    session: Session, run_id: str, *, statuses: Sequence[str] | None, after: int | None, limit: int
) -> list[CommandRecord]:
    stmt = select(CommandRecord).where(CommandRecord.run_id == run_id)
    if statuses:
        stmt = stmt.where(CommandRecord.status.in_(list(statuses)))
    if after is not None:
        stmt = stmt.where(CommandRecord.id > after)
    return list(session.scalars(stmt.order_by(CommandRecord.id).limit(limit)))


def status_values() -> list[str]:
    return [s.value for s in CommandStatus]
