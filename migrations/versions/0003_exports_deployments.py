"""Exports as jobs (spec, progress, worker, attempts) and deployment details (load time, smoke
answer, when retired).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _artifact_columns() -> tuple[sa.Column, ...]:  # type: ignore[type-arg]
    return (
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("spec_json", sa.String(), nullable=True),
        sa.Column("stage", sa.String(), nullable=True),
        sa.Column("progress", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )


def _deployment_columns() -> tuple[sa.Column, ...]:  # type: ignore[type-arg]
    return (
        sa.Column("base_model_id", sa.String(), nullable=True),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("load_ms", sa.Float(), nullable=True),
        sa.Column("smoke_text", sa.String(), nullable=True),
        sa.Column("retired_at", sa.DateTime(), nullable=True),
    )


def upgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        for column in _artifact_columns():
            batch.add_column(column)
    with op.batch_alter_table("deployments") as batch:
        for column in _deployment_columns():
            batch.add_column(column)


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        for column in reversed(_deployment_columns()):
            batch.drop_column(column.name)
    with op.batch_alter_table("artifacts") as batch:
        for column in reversed(_artifact_columns()):
            batch.drop_column(column.name)
