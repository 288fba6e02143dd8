"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 03:36:17.182828
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "api_keys",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.Column(
            "before",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "after",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_at"), ["at"], unique=False)

    op.create_table(
        "runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("algorithm", sa.String(length=32), nullable=False),
        sa.Column("current_algorithm", sa.String(length=32), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column(
            "model_parameter_count",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
        ),
        sa.Column("model_moe", sa.Boolean(), nullable=False),
        sa.Column(
            "config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("world_size", sa.Integer(), nullable=False),
        sa.Column("verifiable_rewards", sa.Boolean(), nullable=False),
        sa.Column("automation", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column(
            "policy",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("last_step", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_report_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runs_project"), ["project"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_status"), ["status"], unique=False)

    op.create_table(
        "webhooks",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column(
            "events",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("min_severity", sa.String(length=16), nullable=False),
        sa.Column("payload_format", sa.String(length=16), nullable=False),
        sa.Column(
            "secrets",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhooks")),
    )
    op.create_table(
        "commands",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column(
            "params",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "reason",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column(
            "effective_step", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "applied_step", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_commands_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commands")),
    )
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.create_index("ix_commands_run_id_status", ["run_id", "status"], unique=False)

    op.create_table(
        "detector_state",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column(
            "state",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_detector_state_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_detector_state")),
    )
    op.create_table(
        "findings",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("step", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("detector", sa.String(length=100), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("metric", sa.String(length=100), nullable=True),
        sa.Column(
            "value", sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"), nullable=True
        ),
        sa.Column(
            "baseline", sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"), nullable=True
        ),
        sa.Column(
            "threshold",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "nonfinite",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column(
            "sample_ids",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("snoozed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_findings_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_findings")),
    )
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.create_index("ix_findings_run_id_step", ["run_id", "step"], unique=False)

    op.create_table(
        "steps",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("step", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("algorithm", sa.String(length=32), nullable=False),
        sa.Column("sample_count", sa.Integer(), nullable=False),
        sa.Column(
            "extra_metrics",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "nonfinite",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "verdict",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "reward_mean",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "reward_std",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "reward_min",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "reward_max",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "advantage_mean",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "advantage_std",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "advantage_abs_max",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "kl_mean", sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"), nullable=True
        ),
        sa.Column(
            "kl_max", sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"), nullable=True
        ),
        sa.Column(
            "entropy_mean",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "length_mean",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "length_max",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "truncation_rate",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "repetition_mean",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "zero_std_group_frac",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "positive_frac",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "loss", sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"), nullable=True
        ),
        sa.Column(
            "policy_loss",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "value_loss",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "grad_norm",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "clip_frac",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "clip_frac_low",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "clip_frac_high",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "ppo_kl", sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"), nullable=True
        ),
        sa.Column(
            "log_ratio_abs_max",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "explained_variance",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "lr", sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"), nullable=True
        ),
        sa.Column(
            "step_time_s",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "tokens_per_s",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "dropped_frac",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.CheckConstraint("phase IN ('rollout', 'update')", name=op.f("ck_steps_phase_known")),
        sa.CheckConstraint("step >= 0", name=op.f("ck_steps_step_nonnegative")),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_steps_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_steps")),
        sa.UniqueConstraint("run_id", "step", "phase", name=op.f("uq_steps_run_id_step_phase")),
    )
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_steps_created_at"), ["created_at"], unique=False)

    op.create_table(
        "webhook_deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "webhook_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["webhooks.id"],
            name=op.f("fk_webhook_deliveries_webhook_id_webhooks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint(
            "webhook_id", "message_id", name=op.f("uq_webhook_deliveries_webhook_id_message_id")
        ),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_deliveries_status_next_attempt_at",
            ["status", "next_attempt_at"],
            unique=False,
        )

    op.create_table(
        "command_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "command_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["command_id"],
            ["commands.id"],
            name=op.f("fk_command_events_command_id_commands"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_command_events")),
    )
    with op.batch_alter_table("command_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_command_events_command_id"), ["command_id"], unique=False
        )

    op.create_table(
        "samples",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("step", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sample_id", sa.String(length=200), nullable=False),
        sa.Column("group_id", sa.String(length=200), nullable=False),
        sa.Column(
            "reward", sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"), nullable=True
        ),
        sa.Column(
            "advantage",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column(
            "kl", sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"), nullable=True
        ),
        sa.Column(
            "log_ratio_max",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "entropy", sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"), nullable=True
        ),
        sa.Column(
            "repetition",
            sa.Double().with_variant(sa.DOUBLE_PRECISION(), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "extra",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "nonfinite",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "flags",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("dropped", sa.Boolean(), nullable=False),
        sa.CheckConstraint("length >= 0", name=op.f("ck_samples_length_nonnegative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_samples")),
    )
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.create_index("ix_samples_run_id_step", ["run_id", "step"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.drop_index("ix_samples_run_id_step")

    op.drop_table("samples")
    with op.batch_alter_table("command_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_command_events_command_id"))

    op.drop_table("command_events")
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_deliveries_status_next_attempt_at")

    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_steps_created_at"))

    op.drop_table("steps")
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.drop_index("ix_findings_run_id_step")

    op.drop_table("findings")
    op.drop_table("detector_state")
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.drop_index("ix_commands_run_id_status")

    op.drop_table("commands")
    op.drop_table("webhooks")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_status"))
        batch_op.drop_index(batch_op.f("ix_runs_project"))

    op.drop_table("runs")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_at"))

    op.drop_table("audit_log")
    op.drop_table("api_keys")
