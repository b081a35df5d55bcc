"""A run's held-out rows as an eval dataset (runs.holdout_dataset_id) and the answers it gives to a few of
them at each eval step (run_samples).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("holdout_dataset_id", sa.String(), nullable=True))
        batch.create_index("ix_runs_holdout_dataset_id", ["holdout_dataset_id"])
        batch.create_foreign_key("fk_runs_holdout_dataset_id", "datasets", ["holdout_dataset_id"], ["id"],
                                 ondelete="SET NULL")
    op.create_table(
        "run_samples",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.String(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("row", sa.Integer(), nullable=False),
        sa.Column("question", sa.String(), nullable=False),
        sa.Column("reference", sa.String(), nullable=False),
        sa.Column("answer", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("run_id", "step", "row"),
    )


def downgrade() -> None:
    op.drop_table("run_samples")
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("fk_runs_holdout_dataset_id", type_="foreignkey")
        batch.drop_index("ix_runs_holdout_dataset_id")
        batch.drop_column("holdout_dataset_id")
