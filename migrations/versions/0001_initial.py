"""Initial schema: base models, datasets and their token stats, runs, checkpoints, artifacts,
deployments, and the append-only event log.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(), nullable=nullable)


def _fk(name: str, target: str, ondelete: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(), sa.ForeignKey(target, ondelete=ondelete), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "base_models",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("architecture", sa.String(), nullable=False),
        sa.Column("parameters", sa.Integer(), nullable=False),
        sa.Column("context_length", sa.Integer(), nullable=True),
        sa.Column("vocab_size", sa.Integer(), nullable=True),
        sa.Column("has_chat_template", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("gguf_path", sa.String(), nullable=True),
        sa.Column("hf_path", sa.String(), nullable=True),
        sa.Column("gguf_size", sa.Integer(), nullable=True),
        sa.Column("hf_size", sa.Integer(), nullable=True),
        sa.Column("sha256", sa.String(), nullable=False, unique=True),
        sa.Column("files_json", sa.String(), nullable=False),
        _ts("created_at"),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("format", sa.String(), nullable=False),
        sa.Column("source_type", sa.String(), nullable=False),
        sa.Column("source_filename", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False, unique=True),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.Column("characters", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        _ts("created_at"),
    )
    op.create_table(
        "dataset_token_stats",
        sa.Column("id", sa.Integer(), primary_key=True),
        _fk("dataset_id", "datasets.id", "CASCADE"),
        _fk("base_model_id", "base_models.id", "CASCADE"),
        sa.Column("cutoff_len", sa.Integer(), nullable=False),
        sa.Column("min_tokens", sa.Integer(), nullable=False),
        sa.Column("median_tokens", sa.Float(), nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("total_tokens", sa.Integer(), nullable=False),
        sa.Column("over_cutoff", sa.Integer(), nullable=False),
        _ts("created_at"),
        sa.UniqueConstraint("dataset_id", "base_model_id", "cutoff_len"),
    )
    op.create_index("ix_dataset_token_stats_dataset_id", "dataset_token_stats", ["dataset_id"])
    op.create_index("ix_dataset_token_stats_base_model_id", "dataset_token_stats", ["base_model_id"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(), primary_key=True),
        _fk("dataset_id", "datasets.id", "RESTRICT"),
        _fk("base_model_id", "base_models.id", "RESTRICT"),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("config_json", sa.String(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("max_steps", sa.Integer(), nullable=True),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        _ts("heartbeat_at", nullable=True),
        _ts("created_at"),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
    )
    op.create_index("ix_runs_dataset_id", "runs", ["dataset_id"])
    op.create_index("ix_runs_base_model_id", "runs", ["base_model_id"])
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True),
        _fk("run_id", "runs.id", "CASCADE"),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        _ts("created_at"),
    )
    op.create_index("ix_checkpoints_run_id", "checkpoints", ["run_id"])
    op.create_table(
        "artifacts",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        _fk("run_id", "runs.id", "RESTRICT", nullable=True),
        _fk("base_model_id", "base_models.id", "RESTRICT", nullable=True),
        sa.Column("path", sa.String(), nullable=True),
        sa.Column("size", sa.Integer(), nullable=True),
        sa.Column("sha256", sa.String(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("verification_json", sa.String(), nullable=True),
        _ts("created_at"),
    )
    op.create_index("ix_artifacts_run_id", "artifacts", ["run_id"])
    op.create_index("ix_artifacts_base_model_id", "artifacts", ["base_model_id"])
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(), primary_key=True),
        _fk("artifact_id", "artifacts.id", "RESTRICT", nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("strategy", sa.String(), nullable=True),
        sa.Column("gap_ms", sa.Float(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        _ts("created_at"),
        _ts("activated_at", nullable=True),
    )
    op.create_index("ix_deployments_artifact_id", "deployments", ["artifact_id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True),
        _ts("ts"),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("entity_type", sa.String(), nullable=False),
        sa.Column("entity_id", sa.String(), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("data_json", sa.String(), nullable=True),
    )
    op.create_index("ix_events_kind", "events", ["kind"])
    op.create_index("ix_events_entity_id", "events", ["entity_id"])
    # The event log is append-only: the database itself refuses to rewrite history.
    op.execute(
        "CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
        "BEGIN SELECT RAISE(ABORT, 'events are append-only'); END"
    )
    op.execute(
        "CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
        "BEGIN SELECT RAISE(ABORT, 'events are append-only'); END"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS events_no_delete")
    op.execute("DROP TRIGGER IF EXISTS events_no_update")
    for table in (
        "events",
        "deployments",
        "artifacts",
        "checkpoints",
        "runs",
        "dataset_token_stats",
        "datasets",
        "base_models",
    ):
        op.drop_table(table)
