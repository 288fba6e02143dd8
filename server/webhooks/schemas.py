"""Wire shapes of /v1/webhooks. A secret appears only in the answers that create one."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rlkeel.client.schemas import Severity
from rlkeel.server.webhooks.events import EventType
from rlkeel.server.webhooks.payloads import PayloadFormat

_READ = ConfigDict(from_attributes=True, use_attribute_docstrings=True)


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    url: str = Field(min_length=1, max_length=2000)
    """http(s) URL that receives the POSTs; link-local, metadata and loopback hosts refused."""
    events: list[EventType] = Field(min_length=1, max_length=len(EventType))
    """Event types to receive."""
    min_severity: Severity = Severity.warning
    """Only events at least this severe (info < warning < high < critical)."""
    payload_format: PayloadFormat = PayloadFormat.rlkeel
    """`rlkeel` ({type, timestamp, data}) or `alertmanager` (Alertmanager's version 4 body)."""


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    url: str | None = Field(default=None, min_length=1, max_length=2000)
    """A new URL (checked like a new subscription's)."""
    events: list[EventType] | None = Field(default=None, min_length=1, max_length=len(EventType))
    """A new list of event types."""
    min_severity: Severity | None = None
    """A new minimum severity."""
    payload_format: PayloadFormat | None = None
    """A new payload format (pending deliveries are sent in it too)."""
    active: bool | None = None
    """false pauses the subscription: no new deliveries; pending ones still go out."""


class WebhookRead(BaseModel):
    model_config = _READ

    id: int
    """Subscription id."""
    url: str
    """Where deliveries go."""
    events: list[str]
    """Event types it receives."""
    min_severity: str
    """Only events at least this severe."""
    payload_format: str
    """`rlkeel` or `alertmanager`."""
    active: bool
    """Whether it receives events."""
    created_at: datetime
    """When it was created."""
    secrets_valid: int
    """Signing secrets valid now: 2 during a rotation (two signatures per message)."""


class WebhookCreated(WebhookRead):
    secret: str
    """The signing secret, `whsec_...`: shown this once, store it now."""


class SecretRotate(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    previous_valid_for_s: float = Field(default=86_400.0, ge=0.0, le=30 * 86_400.0)
    """How long the current secret keeps signing next to the new one (0: it ends now)."""


class SecretRotated(BaseModel):
    model_config = _READ

    webhook_id: int
    """The subscription."""
    secret: str
    """The new signing secret, `whsec_...`: shown this once."""
    previous_valid_until: datetime | None
    """Until when the previous secret also signs; null if it ended now."""


class DeliveryRead(BaseModel):
    model_config = _READ

    id: int
    """Delivery id."""
    webhook_id: int
    """The subscription it goes to."""
    message_id: str
    """The `webhook-id` header: the same on every attempt and on a redelivery."""
    event_type: str
    """What happened (`finding.raised`, ...)."""
    status: Literal["pending", "delivered", "dead"]
    """`pending` (not tried yet or in back-off), `delivered`, or `dead` (attempts used up)."""
    attempts: int
    """Attempts made so far."""
    next_attempt_at: datetime
    """When a pending delivery is tried next."""
    last_status_code: int | None
    """HTTP status of the last attempt; null if it got no answer."""
    last_error: str | None
    """Why the last attempt failed."""
    created_at: datetime
    """When the event happened."""
    delivered_at: datetime | None
    """When the receiver answered 2xx."""


class AttemptRead(BaseModel):
    model_config = _READ

    attempt: int
    """1 for the first try."""
    result: Literal["delivered", "failed", "dead"]
    """`failed`: a retry was scheduled; `dead`: no more retries."""
    status_code: int | None
    """HTTP status, null if there was no answer."""
    error: str | None
    """What went wrong (connection error, non-2xx answer, refused URL)."""
    duration_ms: float
    """Time the attempt took."""
    at: datetime
    """When the attempt ended."""


class DeliveryDetail(DeliveryRead):
    payload: dict[str, Any]
    """The stored event in the `rlkeel` format (the `alertmanager` body is rendered from it)."""
    log: list[AttemptRead]
    """Every attempt, oldest first."""
