"""`evaluations.engine`: what computed an evaluation's figures (appliance.evaluation.schemas.engine_id).
An evaluation is reused, and two are compared, only when it is the engine running now; the rows made
before this column (null) are kept and shown, and evaluated again when asked for.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("engine", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("engine")
