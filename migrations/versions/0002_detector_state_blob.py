"""detector state as a binary blob

Detector state is written on every report; JSON encoding of its ~30k floats dominated ingest
time. The state is derived data: existing runs restart their detectors from an empty state.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM detector_state")
    with op.batch_alter_table("detector_state", schema=None) as batch_op:
        batch_op.drop_column("state")
        batch_op.add_column(sa.Column("blob", sa.LargeBinary(), nullable=False))
    if op.get_bind().dialect.name == "postgresql":
        # Rewritten on every report: skip TOAST compression, it costs CPU and saves little.
        op.execute("ALTER TABLE detector_state ALTER COLUMN blob SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.execute("DELETE FROM detector_state")
    with op.batch_alter_table("detector_state", schema=None) as batch_op:
        batch_op.drop_column("blob")
        batch_op.add_column(
            sa.Column(
                "state",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=False,
            )
        )
