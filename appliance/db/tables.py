"""SQLModel tables. The schema itself is owned by migrations/ (never create_all); a test checks
that these classes and the migrated database agree."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, ForeignKey, String, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _fk(target: str, ondelete: str, nullable: bool = False) -> Column:  # type: ignore[type-arg]
    return Column(String, ForeignKey(target, ondelete=ondelete), nullable=nullable, index=True)


class ModelRecord(SQLModel, table=True):
    """A base model: the GGUF kept for serving and/or the HF folder used for training."""

    __tablename__ = "base_models"

    id: str = Field(primary_key=True)
    name: str
    architecture: str
    parameters: int
    context_length: int | None = None
    vocab_size: int | None = None
    has_chat_template: bool = False
    source: str  # bundled | gguf | hf
    gguf_path: str | None = None
    hf_path: str | None = None
    gguf_size: int | None = None
    hf_size: int | None = None
    sha256: str = Field(unique=True)
    files_json: str = "[]"
    created_at: datetime = Field(default_factory=utcnow)


class Dataset(SQLModel, table=True):
    __tablename__ = "datasets"

    id: str = Field(primary_key=True)
    name: str
    format: str
    source_type: str
    source_filename: str
    sha256: str = Field(unique=True)
    path: str
    rows: int
    turns: int
    characters: int
    size_bytes: int
    # "train", or "eval": the site's golden questions with reference answers (the deployment gate's set).
    purpose: str = Field(default="train", sa_column_kwargs={"server_default": "train"})
    created_at: datetime = Field(default_factory=utcnow)


class DatasetTokenStats(SQLModel, table=True):
    __tablename__ = "dataset_token_stats"
    __table_args__ = (UniqueConstraint("dataset_id", "base_model_id", "cutoff_len"),)

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: str = Field(sa_column=_fk("datasets.id", "CASCADE"))
    base_model_id: str = Field(sa_column=_fk("base_models.id", "CASCADE"))
    cutoff_len: int
    min_tokens: int
    median_tokens: float
    max_tokens: int
    total_tokens: int
    over_cutoff: int
    created_at: datetime = Field(default_factory=utcnow)


class Run(SQLModel, table=True):
    __tablename__ = "runs"

    id: str = Field(primary_key=True)
    # RESTRICT: a dataset or model that a run used cannot vanish from under it.
    dataset_id: str = Field(sa_column=_fk("datasets.id", "RESTRICT"))
    base_model_id: str = Field(sa_column=_fk("base_models.id", "RESTRICT"))
    status: str = "queued"
    config_json: str = "{}"
    step: int = 0
    max_steps: int | None = None
    loss: float | None = None
    error: str | None = None
    name: str | None = None
    preset: str | None = None
    estimate_json: str | None = None
    result_json: str | None = None
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Seconds the run waited for kiosk requests (serving has priority; appliance/serving.py), all attempts.
    paused_for_serving_s: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    # The chat template the run trains with ("model": the model's own, or a named one such as "chatml")
    # and its Jinja text: the trainer renders with it and every export of the run carries it.
    chat_template_name: str | None = None
    chat_template: str | None = None
    # Rows truncated or dropped at cutoff_len, as the trainer reported them (trainer/data.py DataReport).
    data_report_json: str | None = None
    # The eval dataset made of the rows the run holds out (val_size), recorded when its trainer starts.
    holdout_dataset_id: str | None = Field(default=None, sa_column=_fk("datasets.id", "SET NULL", nullable=True))
    worker_pid: int | None = None
    heartbeat_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class RunMetric(SQLModel, table=True):
    __tablename__ = "run_metrics"
    __table_args__ = (UniqueConstraint("run_id", "kind", "step"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(sa_column=_fk("runs.id", "CASCADE"))
    kind: str  # train | eval
    step: int
    loss: float
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    tokens: int | None = None
    memory_mb: float | None = None
    epoch: float | None = None
    created_at: datetime = Field(default_factory=utcnow)


class RunSample(SQLModel, table=True):
    """An answer the model gave at an eval step to a held-out question (trainer/samples.py)."""

    __tablename__ = "run_samples"
    __table_args__ = (UniqueConstraint("run_id", "step", "row"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(sa_column=_fk("runs.id", "CASCADE"))
    step: int
    row: int  # 1-based, in the run's dataset
    question: str
    reference: str
    answer: str
    created_at: datetime = Field(default_factory=utcnow)


class Checkpoint(SQLModel, table=True):
    __tablename__ = "checkpoints"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(sa_column=_fk("runs.id", "CASCADE"))
    step: int
    path: str
    created_at: datetime = Field(default_factory=utcnow)


class Artifact(SQLModel, table=True):
    __tablename__ = "artifacts"

    id: str = Field(primary_key=True)
    kind: str  # adapter | merged | gguf | gguf-adapter
    type: str | None = None
    status: str = "pending"
    run_id: str | None = Field(default=None, sa_column=_fk("runs.id", "RESTRICT", nullable=True))
    base_model_id: str | None = Field(
        default=None, sa_column=_fk("base_models.id", "RESTRICT", nullable=True)
    )
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    error: str | None = None
    verification_json: str | None = None
    name: str | None = None
    spec_json: str | None = None  # what an export job was asked to make
    stage: str | None = None
    progress: float | None = None
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    worker_pid: int | None = None
    heartbeat_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class Deployment(SQLModel, table=True):
    __tablename__ = "deployments"

    id: str = Field(primary_key=True)
    artifact_id: str | None = Field(default=None, sa_column=_fk("artifacts.id", "RESTRICT", nullable=True))
    status: str = "pending"
    strategy: str | None = None
    gap_ms: float | None = None
    error: str | None = None
    # A deployment serves an exported artifact, or a base model's own GGUF (artifact_id null).
    base_model_id: str | None = None
    name: str | None = None  # the model id kiosks see in /v1/models
    # The name kiosks ask for in `model` (null: the site's default); one active deployment per channel.
    channel: str | None = Field(default=None, index=True)
    load_ms: float | None = None
    smoke_text: str | None = None
    # The deployment gate's decision (appliance/jobs/gate.py GateRecord) and, when forced, by whom.
    gate_json: str | None = None
    forced_by: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    activated_at: datetime | None = None
    retired_at: datetime | None = None


class Evaluation(SQLModel, table=True):
    """One model (a GGUF artifact, or a base model's GGUF) evaluated on one dataset: a worker job."""

    __tablename__ = "evaluations"

    id: str = Field(primary_key=True)
    artifact_id: str | None = Field(default=None, sa_column=_fk("artifacts.id", "CASCADE", nullable=True))
    base_model_id: str | None = Field(default=None, sa_column=_fk("base_models.id", "CASCADE", nullable=True))
    dataset_id: str = Field(sa_column=_fk("datasets.id", "RESTRICT"))
    model_name: str
    status: str = "queued"
    eval_set: str | None = None  # fingerprint of the rows (appliance/evaluation/schemas.py)
    engine: str | None = None  # what computed the figures (schemas.engine_id); None: older than the field
    questions_done: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    questions_total: int | None = None
    metrics_json: str | None = None  # {metric: {mean, low, high, n}} once succeeded
    error: str | None = None
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    worker_pid: int | None = None
    heartbeat_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Event(SQLModel, table=True):
    """Append-only log (triggers in the migration refuse UPDATE and DELETE)."""

    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    ts: datetime = Field(default_factory=utcnow)
    kind: str = Field(index=True)
    entity_type: str
    entity_id: str = Field(index=True)
    message: str
    data_json: str | None = None
