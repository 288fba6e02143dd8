"""detector state stored in three parts

The run's analysis state was one ~180 kB blob rewritten on every report, though most of it
changes rarely: the forest's training rows only at a refit, the recent samples (history and
forest reservoir) only on rollout reports. `blob` now holds the small, always-changing part;
`memory` the recent samples; `fit` the training rows of the current and the pending forest.
Each is written only when it changed. Rows written before this revision (everything in `blob`,
the other two NULL) are read as they are and split on their next write.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("detector_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("memory", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("fit", sa.LargeBinary(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # Like `blob`: binary floats, TOAST compression costs CPU and saves nothing.
        op.execute("ALTER TABLE detector_state ALTER COLUMN memory SET STORAGE EXTERNAL")
        op.execute("ALTER TABLE detector_state ALTER COLUMN fit SET STORAGE EXTERNAL")


def downgrade() -> None:
    # The split state cannot be read by the previous revision: detectors start afresh.
    op.execute("DELETE FROM detector_state")
    with op.batch_alter_table("detector_state", schema=None) as batch_op:
        batch_op.drop_column("fit")
        batch_op.drop_column("memory")
