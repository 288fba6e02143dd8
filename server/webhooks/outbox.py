"""The durable outbox: delivery rows written in the transaction of the event they announce,
claimed by workers with FOR UPDATE SKIP LOCKED, finished with one row in the delivery log.

Statuses: 'pending' (waiting for its first try or in back-off), 'delivered', 'dead'.

A claim increments `attempts` and pushes `next_attempt_at` one lease ahead, then commits, so
the HTTP call runs outside any transaction and no other worker (in this or another server
process) picks the row up meanwhile. A worker that dies mid-attempt leaves the row to be
retried when the lease ends: delivery is at least once, and a receiver deduplicates on
`webhook-id`. A finish only applies if the row is still the claim it made (same attempt).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from rlkeel.server.db.models import Webhook, WebhookAttempt, WebhookDelivery
from rlkeel.server.webhooks.events import Event, at_least
from rlkeel.server.webhooks.payloads import rlkeel_payload
from rlkeel.server.webhooks.retry import RetrySchedule
from rlkeel.server.webhooks.sender import AttemptOutcome

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
FAILED = "failed"  # an attempt result (and metric label), never a row status
ENQUEUED = "rlkeel.webhooks.enqueued"


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


def message_id_for(dedup_key: str) -> str:
    return "msg_" + hashlib.sha256(dedup_key.encode()).hexdigest()[:32]


def subscribers(session: Session, events: Iterable[Event]) -> dict[int, list[Webhook]]:
    """For each event (by index), the active webhooks that want it."""
    hooks = list(session.scalars(select(Webhook).where(Webhook.active.is_(True))))
    if not hooks:
        return {}
    return {
        i: [w for w in hooks if e.type.value in w.events and at_least(e.severity, w.min_severity)]
        for i, e in enumerate(events)
    }


def enqueue(session: Session, events: list[Event]) -> int:
    """Write one pending delivery per (event, subscribed webhook); returns how many were new.

    Events with a dedup key get a message id derived from it and are written once per webhook
    however often they are announced (the unique (webhook_id, message_id) decides).
    """
    if not events:
        return 0
    wanted = subscribers(session, events)
    rows: list[dict[str, Any]] = []
    for i, event in enumerate(events):
        hooks = wanted.get(i, [])
        if not hooks:
            continue
        message_id = message_id_for(event.dedup_key) if event.dedup_key else new_message_id()
        payload = rlkeel_payload(event)
        rows += [{"webhook_id": w.id, "message_id": message_id, "event_type": event.type.value,
                  "payload": payload, "status": PENDING, "attempts": 0,
                  "next_attempt_at": event.occurred_at, "created_at": event.occurred_at}
                 for w in hooks]  # fmt: skip
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(WebhookDelivery).on_conflict_do_nothing(
        index_elements=["webhook_id", "message_id"]
    )
    result = session.execute(stmt, rows)
    session.info[ENQUEUED] = True  # after commit, the app wakes its worker (no poll delay)
    return int(getattr(result, "rowcount", 0) or 0)


def enqueued_in(session: Session) -> bool:
    """Whether this session's transaction wrote deliveries (and forget it)."""
    return bool(session.info.pop(ENQUEUED, False))


@dataclass(frozen=True)
class Claim:
    delivery_id: int
    attempt: int
    webhook_id: int
    url: str
    payload_format: str
    secret_entries: list[dict[str, Any]]
    message_id: str
    payload: dict[str, Any]


def claim_due(session: Session, *, now: datetime, limit: int, lease_s: float) -> list[Claim]:
    stmt = (
        select(WebhookDelivery, Webhook)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
        .with_for_update(of=WebhookDelivery, skip_locked=True)
    )
    claims = []
    for delivery, hook in session.execute(stmt).all():
        # Conditional on what was read, as a second guard: PostgreSQL's SKIP LOCKED and
        # SQLite's BEGIN IMMEDIATE (one writer at a time) already keep a row to one claimer.
        taken = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery.id,
                   WebhookDelivery.attempts == delivery.attempts,
                   WebhookDelivery.status == PENDING)  # fmt: skip
            .values(attempts=delivery.attempts + 1,
                    next_attempt_at=now + timedelta(seconds=lease_s))  # fmt: skip
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            continue
        claims.append(Claim(delivery.id, delivery.attempts + 1, hook.id, hook.url,
                            hook.payload_format, list(hook.secrets), delivery.message_id,
                            dict(delivery.payload)))  # fmt: skip
    return claims


def finish(
    session: Session, claim: Claim, outcome: AttemptOutcome, *, schedule: RetrySchedule,
    now: datetime,
) -> str | None:  # fmt: skip
    """Record the attempt; its result ('delivered', 'failed', 'dead'), or None if the claim
    was overtaken (lease ran out, redelivered) and nothing was written."""
    delivery = session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.id == claim.delivery_id).with_for_update()
    ).one_or_none()
    if delivery is None or delivery.status != PENDING or delivery.attempts != claim.attempt:
        return None
    delivery.last_status_code = outcome.status_code
    delivery.last_error = outcome.error
    if outcome.ok:
        result = delivery.status = DELIVERED
        delivery.delivered_at = now
    elif schedule.is_exhausted(claim.attempt):
        result = delivery.status = DEAD
    else:
        result = FAILED
        delivery.next_attempt_at = now + timedelta(seconds=schedule.delay_s(claim.attempt))
    session.add(WebhookAttempt(delivery_id=delivery.id, attempt=claim.attempt, result=result,
                               status_code=outcome.status_code, error=outcome.error,
                               duration_ms=outcome.duration_ms, at=now))  # fmt: skip
    return result


def purge_finished(session: Session, *, before: datetime, limit: int = 10_000) -> int:
    """Delete up to `limit` delivered or dead deliveries created before `before` (their
    attempts go with them); returns how many."""
    ids = list(session.scalars(
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status.in_((DELIVERED, DEAD)), WebhookDelivery.created_at < before)
        .order_by(WebhookDelivery.id)
        .limit(limit)
    ))  # fmt: skip
    if ids:
        session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids)))
    return len(ids)
