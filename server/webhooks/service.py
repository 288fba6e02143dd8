"""Webhook subscriptions, and the announcements that the rest of the service makes.

`announce_*` only add outbox rows to the caller's session: they commit (or roll back) with the
finding or command they announce.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rlkeel.client.schemas import Severity
from rlkeel.server.api.errors import Conflict, NotFound, ValidationFailed
from rlkeel.server.db.base import utcnow
from rlkeel.server.db.models import (
    CommandRecord,
    FindingRecord,
    Run,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
)
from rlkeel.server.webhooks import outbox
from rlkeel.server.webhooks.events import COMMAND_SEVERITY, STALL_SEVERITY, Event, EventType
from rlkeel.server.webhooks.secret_store import SecretBox, is_valid, sealed
from rlkeel.server.webhooks.signing import new_secret
from rlkeel.server.webhooks.urls import UrlPolicy, UrlRefused, check_url


def _run_ref(run: Run) -> dict[str, Any]:
    return {"id": run.id, "name": run.name, "project": run.project}


# --- announcements -----------------------------------------------------------------------


def finding_event(run: Run, f: FindingRecord) -> Event:
    value = f.nonfinite.get("value", f.value) if f.nonfinite else f.value
    return Event(
        type=EventType.finding_raised, severity=Severity(f.severity), occurred_at=f.created_at,
        run=_run_ref(run),
        data={"finding_id": f.id, "detector": f.detector, "metric": f.metric, "value": value,
              "step": f.step, "phase": f.phase, "message": f.message},
        summary=f"{f.severity} {f.detector} at step {f.step} of {run.name}: {f.message}",
    )  # fmt: skip


def announce_findings(session: Session, run: Run, findings: Sequence[FindingRecord]) -> None:
    if findings:
        outbox.enqueue(session, [finding_event(run, f) for f in findings])


def command_event(run: Run, c: CommandRecord, event_type: EventType) -> Event:
    return Event(
        type=event_type, severity=COMMAND_SEVERITY[event_type.value], occurred_at=utcnow(),
        run=_run_ref(run),
        data={"command_id": c.id, "kind": c.kind, "params": c.params, "origin": c.origin,
              "status": c.status, "reason": c.reason.get("text"), "detail": c.detail,
              "applied_step": c.applied_step},
        summary=f"command {c.kind} #{c.id} {event_type.value.split('.')[1]} ({c.status}) "
                f"for {run.name}",
    )  # fmt: skip


def announce_command(session: Session, command: CommandRecord, event_type: EventType) -> None:
    run = session.get(Run, command.run_id)  # usually already in the session: no query
    if run is not None:
        outbox.enqueue(session, [command_event(run, command, event_type)])


def stalled_event(run: Run, silent_since: datetime, now: datetime) -> Event:
    silent_s = (now - silent_since).total_seconds()
    return Event(
        type=EventType.run_stalled, severity=STALL_SEVERITY, occurred_at=now, run=_run_ref(run),
        data={"last_step": run.last_step, "last_report_at": silent_since.isoformat(),
              "silent_s": round(silent_s, 1)},
        summary=f"run {run.name} sent no report for {silent_s:.0f} s",
        # One announcement per silence: the same last report gives the same message id.
        dedup_key=f"run.stalled:{run.id}:{silent_since.isoformat()}",
    )  # fmt: skip


def announce_stalled_runs(session: Session, *, now: datetime, stall_after_s: float) -> int:
    """Announce running runs silent for longer than `stall_after_s`; returns how many are."""
    silent_since = func.coalesce(Run.last_report_at, Run.created_at)
    cutoff = now - timedelta(seconds=stall_after_s)
    runs = list(session.scalars(select(Run).where(Run.status == "running", silent_since < cutoff)))
    events = [stalled_event(r, r.last_report_at or r.created_at, now) for r in runs]
    outbox.enqueue(session, events)
    return len(runs)


# --- subscriptions -------------------------------------------------------------------------


def check_events(events: Sequence[str]) -> list[str]:
    known = {e.value for e in EventType}
    for i, e in enumerate(events):
        if e not in known:
            raise ValidationFailed(f"events.{i}: unknown event {e!r}; known: "
                                   f"{', '.join(sorted(known))}", fields=[f"events.{i}"])  # fmt: skip
    return list(dict.fromkeys(events))


def create(session: Session, box: SecretBox, *, url: str, events: Sequence[str],
           min_severity: str, payload_format: str, policy: UrlPolicy) -> tuple[Webhook, str]:  # fmt: skip
    """A new subscription and its secret (shown to the caller once, stored encrypted)."""
    try:
        check_url(url, policy)
    except UrlRefused as exc:
        raise ValidationFailed(f"url: {exc}", fields=["url"]) from None
    secret = new_secret()
    hook = Webhook(url=url, events=check_events(events), min_severity=min_severity,
                   payload_format=payload_format, secrets=[sealed(box, secret)], active=True)  # fmt: skip
    session.add(hook)
    session.flush()
    return hook, secret


def update(hook: Webhook, changes: dict[str, Any], *, policy: UrlPolicy) -> None:
    """Apply the given fields (already validated by the schema); the URL is checked again."""
    if "url" in changes:
        try:
            check_url(changes["url"], policy)
        except UrlRefused as exc:
            raise ValidationFailed(f"url: {exc}", fields=["url"]) from None
    if "events" in changes:
        changes["events"] = check_events(changes["events"])
    for name, value in changes.items():
        setattr(hook, name, value)


def get(session: Session, webhook_id: int, *, for_update: bool = False) -> Webhook:
    stmt = select(Webhook).where(Webhook.id == webhook_id)
    if for_update:
        stmt = stmt.with_for_update()
    hook = session.scalars(stmt).one_or_none()
    if hook is None:
        raise NotFound(f"no webhook with id {webhook_id}", fields=["id"])
    return hook


def list_all(session: Session) -> list[Webhook]:
    return list(session.scalars(select(Webhook).order_by(Webhook.id)))


def rotate_secret(session: Session, box: SecretBox, hook: Webhook, *,
                  previous_valid_for_s: float) -> str:  # fmt: skip
    """A new secret; the current one keeps signing for `previous_valid_for_s` (two signatures
    per message meanwhile, so receivers can switch without losing a message)."""
    now = utcnow()
    current = [e for e in hook.secrets if e.get("expires_at") is None]
    secret = new_secret()
    entries = [sealed(box, secret)]
    if previous_valid_for_s > 0:
        end = (now + timedelta(seconds=previous_valid_for_s)).isoformat()
        entries += [{**e, "expires_at": end} for e in current[:1]]
    hook.secrets = entries
    return secret


def secrets_valid(hook: Webhook, now: datetime) -> int:
    return sum(1 for e in hook.secrets if is_valid(e, now))


def list_deliveries(session: Session, webhook_id: int, *, status: str | None, after: int | None,
                    limit: int) -> list[WebhookDelivery]:  # fmt: skip
    stmt = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    if after is not None:
        stmt = stmt.where(WebhookDelivery.id > after)
    return list(session.scalars(stmt.order_by(WebhookDelivery.id).limit(limit)))


def get_delivery(session: Session, webhook_id: int, delivery_id: int, *,
                 for_update: bool = False) -> WebhookDelivery:  # fmt: skip
    stmt = select(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                         WebhookDelivery.webhook_id == webhook_id)  # fmt: skip
    if for_update:
        stmt = stmt.with_for_update()
    delivery = session.scalars(stmt).one_or_none()
    if delivery is None:
        raise NotFound(f"webhook {webhook_id} has no delivery {delivery_id}", fields=["id"])
    return delivery


def attempts_of(session: Session, delivery_id: int) -> list[WebhookAttempt]:
    stmt = select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
    return list(session.scalars(stmt.order_by(WebhookAttempt.id)))


TEST_EVENT = "webhook.test"


def send_test(session: Session, hook: Webhook) -> WebhookDelivery:
    """Queue a `webhook.test` message to this subscription only, whatever its filters."""
    now = utcnow()
    payload = {"type": TEST_EVENT, "timestamp": now.isoformat(),
               "data": {"severity": "info", "run": None, "webhook_id": hook.id,
                        "summary": "a test message from rlkeel: this subscription works"}}  # fmt: skip
    delivery = WebhookDelivery(webhook_id=hook.id, message_id=outbox.new_message_id(),
                               event_type=TEST_EVENT, payload=payload, status=outbox.PENDING,
                               attempts=0, next_attempt_at=now, created_at=now)  # fmt: skip
    session.add(delivery)
    session.flush()
    session.info[outbox.ENQUEUED] = True
    return delivery


def redeliver(delivery: WebhookDelivery) -> None:
    """Send a delivered or dead message again, same `webhook-id`, with a fresh attempt budget."""
    if delivery.status == outbox.PENDING:
        raise Conflict(f"delivery {delivery.id} is still pending; it will be tried at "
                       f"{delivery.next_attempt_at.isoformat()}", fields=["status"])  # fmt: skip
    delivery.status = outbox.PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = utcnow()
    delivery.delivered_at = None
