"""Runs record the chat template they train with and the rows truncated or dropped at cutoff_len.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("chat_template_name", sa.String(), nullable=True))
        batch.add_column(sa.Column("chat_template", sa.String(), nullable=True))
        batch.add_column(sa.Column("data_report_json", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("data_report_json")
        batch.drop_column("chat_template")
        batch.drop_column("chat_template_name")
