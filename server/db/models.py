"""The store of record (DESIGN §6). Schema changes go through Alembic only.

Per-step metrics are real columns (one per canonical name) so Grafana can chart them with
plain SQL. SQLite turns NaN into NULL, so every table that holds numbers also keeps a small
`nonfinite` map (column → "NaN"/"Infinity"/"-Infinity") that readers overlay: non-finite
values survive on every backend.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from rlkeel.client.schemas import CANONICAL_STEP_METRICS

from .base import Base, BigId, Float64, JSONType, UTCDateTime, utcnow


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    project: Mapped[str] = mapped_column(String(200), index=True)
    algorithm: Mapped[str] = mapped_column(String(32))
    current_algorithm: Mapped[str] = mapped_column(String(32))
    model_name: Mapped[str] = mapped_column(String(200))
    model_parameter_count: Mapped[int | None] = mapped_column(BigId, nullable=True)
    model_moe: Mapped[bool] = mapped_column(Boolean, default=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    world_size: Mapped[int] = mapped_column(Integer, default=1)
    verifiable_rewards: Mapped[bool] = mapped_column(Boolean, default=True)
    automation: Mapped[str] = mapped_column(String(16), default="auto")
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    last_step: Mapped[int | None] = mapped_column(BigId, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_report_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    steps: Mapped[list[StepRecord]] = relationship(back_populates="run", lazy="raise")


class StepRecord(Base):
    __tablename__ = "steps"
    __table_args__ = (
        UniqueConstraint("run_id", "step", "phase"),
        CheckConstraint("step >= 0", name="step_nonnegative"),
        CheckConstraint("phase IN ('rollout', 'update')", name="phase_known"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(BigId)
    phase: Mapped[str] = mapped_column(String(16))
    algorithm: Mapped[str] = mapped_column(String(32))
    sample_count: Mapped[int] = mapped_column(Integer, default=0)
    # Metrics outside the canonical set, name → number (non-finite as strings).
    extra_metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    nonfinite: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    verdict: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    run: Mapped[Run] = relationship(back_populates="steps", lazy="raise")


# One nullable double column per canonical step metric.
for _metric in CANONICAL_STEP_METRICS:
    setattr(StepRecord, _metric, mapped_column(_metric, Float64, nullable=True))
StepRecord.__annotations__.update({m: Mapped[float | None] for m in CANONICAL_STEP_METRICS})

SAMPLE_FLOAT_FIELDS = ("reward", "advantage", "kl", "log_ratio_max", "entropy", "repetition")


class SampleRecord(Base):
    """Per-sample statistics of rollout reports, with detector flags."""

    __tablename__ = "samples"
    __table_args__ = (
        Index("ix_samples_run_id_step", "run_id", "step"),
        CheckConstraint("length >= 0", name="length_nonnegative"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No foreign keys here on purpose: a per-row RI check tripled the cost of COPY. Samples
    # are written only in the transaction that writes their step row (rollout phase), and
    # are found by (run_id, step).
    run_id: Mapped[str] = mapped_column(String(36))
    step: Mapped[int] = mapped_column(BigId)
    sample_id: Mapped[str] = mapped_column(String(200))
    group_id: Mapped[str] = mapped_column(String(200))
    reward: Mapped[float | None] = mapped_column(Float64, nullable=True)
    advantage: Mapped[float | None] = mapped_column(Float64, nullable=True)
    length: Mapped[int] = mapped_column(Integer)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    kl: Mapped[float | None] = mapped_column(Float64, nullable=True)
    log_ratio_max: Mapped[float | None] = mapped_column(Float64, nullable=True)
    entropy: Mapped[float | None] = mapped_column(Float64, nullable=True)
    repetition: Mapped[float | None] = mapped_column(Float64, nullable=True)
    # NULL means empty: most samples have no extras, no non-finite values and no flags, and
    # not parsing three JSON documents per row keeps COPY close to its floor.
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    nonfinite: Mapped[dict[str, str] | None] = mapped_column(JSONType, nullable=True)
    flags: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    dropped: Mapped[bool] = mapped_column(Boolean, default=False)


class FindingRecord(Base):
    __tablename__ = "findings"
    __table_args__ = (Index("ix_findings_run_id_step", "run_id", "step"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(BigId)
    phase: Mapped[str] = mapped_column(String(16))
    detector: Mapped[str] = mapped_column(String(100))
    severity: Mapped[str] = mapped_column(String(16))
    metric: Mapped[str | None] = mapped_column(String(100), nullable=True)
    value: Mapped[float | None] = mapped_column(Float64, nullable=True)
    baseline: Mapped[float | None] = mapped_column(Float64, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float64, nullable=True)
    nonfinite: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    message: Mapped[str] = mapped_column(Text)
    sample_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    status: Mapped[str] = mapped_column(String(16), default="open")
    snoozed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CommandRecord(Base):
    __tablename__ = "commands"
    __table_args__ = (Index("ix_commands_run_id_status", "run_id", "status"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    reason: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    origin: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    effective_step: Mapped[int | None] = mapped_column(BigId, nullable=True)
    applied_step: Mapped[int | None] = mapped_column(BigId, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    events: Mapped[list[CommandEvent]] = relationship(
        back_populates="command", lazy="raise", order_by="CommandEvent.id"
    )


class CommandEvent(Base):
    """Status history of a command: one row per transition."""

    __tablename__ = "command_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    command_id: Mapped[int] = mapped_column(
        ForeignKey("commands.id", ondelete="CASCADE"), index=True
    )
    from_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    command: Mapped[CommandRecord] = relationship(back_populates="events", lazy="raise")


class ApiKey(Base):
    """Only a SHA-256 of the token is stored; the prefix finds the row."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Webhook(Base):
    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSONType, default=list)
    min_severity: Mapped[str] = mapped_column(String(16), default="warning")
    payload_format: Mapped[str] = mapped_column(String(16), default="rlkeel")
    # Signing secrets, Fernet-encrypted: [{"ciphertext", "expires_at"}], newest first; two are
    # valid at once during a rotation. Never returned after creation.
    secrets: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """The outbox: written in the same transaction as the event it announces."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "message_id"),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WebhookAttempt(Base):
    """The delivery log: one row per HTTP attempt of a delivery."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    # 'delivered', 'failed' (a retry is scheduled) or 'dead' (no more retries).
    result: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[float] = mapped_column(Float64)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(64))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class DetectorState(Base):
    """Per-run detector and policy state, bounded in size, so it survives a restart.

    Stored in three parts (`rlkeel.server.state_parts`), each rewritten only when it changed:
    `blob` the small part that changes on every report (gates, windows, CUSUMs, policy),
    `memory` the recent samples (rollout reports change it), `fit` the forests' training rows
    (a refit changes it). Only the service writes these columns; they are derived data
    (`rlkeel backtest` can rebuild them).
    """

    __tablename__ = "detector_state"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    memory: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    fit: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
