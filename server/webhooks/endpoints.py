"""Routes for alert webhooks (admin only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from rlkeel.server.api.deps import AdminRole, DeliveryId, SessionDep, SettingsDep, WebhookId
from rlkeel.server.audit.service import record
from rlkeel.server.db.base import utcnow
from rlkeel.server.db.models import Webhook
from rlkeel.server.settings import Settings
from rlkeel.server.webhooks import service
from rlkeel.server.webhooks.schemas import (
    AttemptRead,
    DeliveryDetail,
    DeliveryRead,
    SecretRotate,
    SecretRotated,
    WebhookCreate,
    WebhookCreated,
    WebhookRead,
    WebhookUpdate,
)
from rlkeel.server.webhooks.secret_store import SecretBox
from rlkeel.server.webhooks.urls import UrlPolicy

router = APIRouter(tags=["webhooks"])


def _box(request: Request) -> SecretBox:
    box: SecretBox = request.app.state.webhook_secret_box()
    return box


def _policy(settings: Settings) -> UrlPolicy:
    return UrlPolicy(allow_loopback=settings.webhook_allow_loopback,
                     allow_link_local=settings.webhook_allow_link_local)  # fmt: skip


def _read(hook: Webhook) -> WebhookRead:
    return WebhookRead(id=hook.id, url=hook.url, events=hook.events, min_severity=hook.min_severity,
                       payload_format=hook.payload_format, active=hook.active,
                       created_at=hook.created_at,
                       secrets_valid=service.secrets_valid(hook, utcnow()))  # fmt: skip


@router.post("/v1/webhooks", response_model=WebhookCreated, status_code=201)
def create_webhook(body: WebhookCreate, request: Request, session: SessionDep,
                   settings: SettingsDep, principal: AdminRole) -> WebhookCreated:  # fmt: skip
    """Subscribe a URL to events; the answer holds its signing secret, shown this once."""
    policy = _policy(settings)
    hook, secret = service.create(
        session, _box(request), url=body.url, events=[e.value for e in body.events],
        min_severity=body.min_severity.value, payload_format=body.payload_format.value,
        policy=policy,
    )  # fmt: skip
    read = _read(hook)
    record(session, principal, action="webhook.create", target_type="webhook", target_id=hook.id,
           before=None, after=read.model_dump(mode="json"))  # fmt: skip
    return WebhookCreated(**read.model_dump(), secret=secret)


@router.get("/v1/webhooks", response_model=list[WebhookRead])
def list_webhooks(session: SessionDep, _: AdminRole) -> list[WebhookRead]:
    """All subscriptions (never their secrets)."""
    return [_read(h) for h in service.list_all(session)]


@router.get("/v1/webhooks/{id}", response_model=WebhookRead)
def get_webhook(id: WebhookId, session: SessionDep, _: AdminRole) -> WebhookRead:
    """One subscription (never its secret)."""
    return _read(service.get(session, id))


@router.patch("/v1/webhooks/{id}", response_model=WebhookRead)
def update_webhook(id: int, body: WebhookUpdate, session: SessionDep, settings: SettingsDep,
                   principal: AdminRole) -> WebhookRead:  # fmt: skip
    """Change a subscription's URL, events, minimum severity or format, or pause it."""
    hook = service.get(session, id, for_update=True)
    before = _read(hook).model_dump(mode="json")
    changes = body.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    service.update(hook, changes, policy=_policy(settings))
    session.flush()
    after = _read(hook)
    record(session, principal, action="webhook.update", target_type="webhook", target_id=id,
           before=before, after=after.model_dump(mode="json"))  # fmt: skip
    return after


@router.delete("/v1/webhooks/{id}", status_code=204)
def delete_webhook(id: WebhookId, session: SessionDep, principal: AdminRole) -> Response:
    """Unsubscribe; pending deliveries and the delivery log go with it."""
    hook = service.get(session, id, for_update=True)
    before = _read(hook).model_dump(mode="json")
    session.delete(hook)
    record(session, principal, action="webhook.delete", target_type="webhook", target_id=id,
           before=before, after=None)  # fmt: skip
    return Response(status_code=204)


@router.post("/v1/webhooks/{id}/rotate-secret", response_model=SecretRotated)
def rotate_secret(id: WebhookId, request: Request, session: SessionDep, principal: AdminRole,
                  body: SecretRotate | None = None) -> SecretRotated:  # fmt: skip
    """A new signing secret; the old one keeps signing for a while (two signatures per
    message), so a receiver can switch without losing messages."""
    body = body or SecretRotate()
    hook = service.get(session, id, for_update=True)
    secret = service.rotate_secret(session, _box(request), hook,
                                   previous_valid_for_s=body.previous_valid_for_s)  # fmt: skip
    ends = [e["expires_at"] for e in hook.secrets if e.get("expires_at")]
    record(session, principal, action="webhook.rotate_secret", target_type="webhook",
           target_id=id, before=None, after={"previous_valid_for_s": body.previous_valid_for_s})  # fmt: skip
    return SecretRotated(webhook_id=id, secret=secret,
                         previous_valid_until=datetime.fromisoformat(ends[0]) if ends else None)  # fmt: skip


@router.post("/v1/webhooks/{id}/test", response_model=DeliveryRead, status_code=201)
def send_test(id: int, session: SessionDep, _: AdminRole) -> DeliveryRead:
    """Send a `webhook.test` message to this subscription now (whatever its filters)."""
    return DeliveryRead.model_validate(service.send_test(session, service.get(session, id)))


@router.get("/v1/webhooks/{id}/deliveries", response_model=list[DeliveryRead])
def list_deliveries(
    id: WebhookId,
    session: SessionDep,
    _: AdminRole,
    status: Annotated[Literal["pending", "delivered", "dead"] | None,
                      Query(description="Only this status")] = None,  # fmt: skip
    after: Annotated[int | None, Query(ge=0, le=2**62, description="Only ids after this")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 200,
) -> list[DeliveryRead]:
    """The outbox and delivery log of a subscription, oldest first."""
    service.get(session, id)
    rows = service.list_deliveries(session, id, status=status, after=after, limit=limit)
    return [DeliveryRead.model_validate(d) for d in rows]


@router.get("/v1/webhooks/{id}/deliveries/{delivery_id}", response_model=DeliveryDetail)
def get_delivery(id: WebhookId, delivery_id: DeliveryId, session: SessionDep, _: AdminRole) -> DeliveryDetail:
    """One delivery with its payload and every attempt."""
    d = service.get_delivery(session, id, delivery_id)
    return DeliveryDetail(**DeliveryRead.model_validate(d).model_dump(), payload=d.payload,
                          log=[AttemptRead.model_validate(a)
                               for a in service.attempts_of(session, d.id)])  # fmt: skip


@router.post("/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", response_model=DeliveryRead)
def redeliver(id: WebhookId, delivery_id: DeliveryId, session: SessionDep, principal: AdminRole) -> DeliveryRead:
    """Send a delivered or dead message again (same `webhook-id`, fresh attempt budget)."""
    d = service.get_delivery(session, id, delivery_id, for_update=True)
    before = {"status": d.status, "attempts": d.attempts}
    service.redeliver(d)
    record(session, principal, action="webhook.redeliver", target_type="webhook_delivery",
           target_id=d.id, before=before, after={"status": d.status})  # fmt: skip
    session.flush()
    return DeliveryRead.model_validate(d)
