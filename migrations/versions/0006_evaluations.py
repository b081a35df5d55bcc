"""Evaluations (a third job kind beside runs and exports), datasets marked as eval sets, and the
deployment gate's record on each deployment.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("purpose", sa.String(), nullable=False, server_default="train"))
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("gate_json", sa.String(), nullable=True))
        batch.add_column(sa.Column("forced_by", sa.String(), nullable=True))
    op.create_table(
        "evaluations",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("artifact_id", sa.String(), sa.ForeignKey("artifacts.id", ondelete="CASCADE"), nullable=True,
                  index=True),
        sa.Column("base_model_id", sa.String(), sa.ForeignKey("base_models.id", ondelete="CASCADE"), nullable=True,
                  index=True),
        sa.Column("dataset_id", sa.String(), sa.ForeignKey("datasets.id", ondelete="RESTRICT"), nullable=False,
                  index=True),
        sa.Column("model_name", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False, server_default="queued"),
        sa.Column("eval_set", sa.String(), nullable=True),
        sa.Column("questions_done", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("questions_total", sa.Integer(), nullable=True),
        sa.Column("metrics_json", sa.String(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("evaluations")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("forced_by")
        batch.drop_column("gate_json")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("purpose")
