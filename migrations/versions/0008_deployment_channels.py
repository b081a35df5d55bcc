"""Named deployments: `deployments.channel`, the name kiosks ask for in `model` (null: the site's
default deployment). Several deployments can be active at once, one per channel.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("channel", sa.String(), nullable=True))
        batch.create_index("ix_deployments_channel", ["channel"])


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_index("ix_deployments_channel")
        batch.drop_column("channel")
