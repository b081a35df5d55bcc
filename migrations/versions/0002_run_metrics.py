"""Runs: per-step metrics, the pre-flight estimate, attempts, and the final result.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_metrics",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.String(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("learning_rate", sa.Float(), nullable=True),
        sa.Column("grad_norm", sa.Float(), nullable=True),
        sa.Column("tokens_per_s", sa.Float(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=True),
        sa.Column("memory_mb", sa.Float(), nullable=True),
        sa.Column("epoch", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("run_id", "kind", "step"),
    )
    op.create_index("ix_run_metrics_run_id", "run_metrics", ["run_id"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("name", sa.String(), nullable=True))
        batch.add_column(sa.Column("preset", sa.String(), nullable=True))
        batch.add_column(sa.Column("estimate_json", sa.String(), nullable=True))
        batch.add_column(sa.Column("result_json", sa.String(), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        for column in ("attempts", "result_json", "estimate_json", "preset", "name"):
            batch.drop_column(column)
    op.drop_index("ix_run_metrics_run_id", "run_metrics")
    op.drop_table("run_metrics")
