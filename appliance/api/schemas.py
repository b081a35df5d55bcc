"""Public response models (what the API promises), built from table rows."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from appliance.db.tables import Artifact, Dataset, DatasetTokenStats, ModelRecord, Run, RunMetric, RunSample
from appliance.jobs.runs import RunExtra
from appliance.models.families import find


class ModelFile(BaseModel):
    path: str = Field(description="Path inside the model's folder")
    size: int
    sha256: str


class ModelPublic(BaseModel):
    id: str
    name: str
    architecture: str
    family: str | None = Field(description="The model family (appliance/models/families.py), e.g. 'Qwen3 (dense)'; "
                                           "null for a model registered before families were checked")
    exporter: str | None = Field(description="Who writes its GGUF: 'writer' (the appliance's) or 'llama.cpp' "
                                             "(llama.cpp's converter)")
    parameters: int
    context_length: int | None
    vocab_size: int | None
    chat_template: bool = Field(description="Whether the model ships a chat template")
    source: str = Field(description="bundled, gguf or hf: where the model came from")
    has_gguf: bool = Field(description="A GGUF file is kept for serving")
    gguf_size: int | None
    hf_size: int | None = Field(description="Bytes of the full-precision Hugging Face folder used for training")
    sha256: str = Field(description="sha256 of the imported GGUF file, or of the HF folder's file list")
    files: list[ModelFile]
    created_at: datetime

    @classmethod
    def of(cls, m: ModelRecord) -> ModelPublic:
        family = find(m.architecture)
        return cls(
            id=m.id, name=m.name, architecture=m.architecture, parameters=m.parameters,
            family=family.name if family else None, exporter=family.exporter if family else None,
            context_length=m.context_length, vocab_size=m.vocab_size, chat_template=m.has_chat_template,
            source=m.source, has_gguf=m.gguf_path is not None, gguf_size=m.gguf_size, hf_size=m.hf_size,
            sha256=m.sha256, files=[ModelFile(**f) for f in json.loads(m.files_json)], created_at=m.created_at,
        )


class TokenStats(BaseModel):
    base_model_id: str
    cutoff_len: int
    min_tokens: int
    median_tokens: float
    max_tokens: int
    total_tokens: int
    over_cutoff: int = Field(
        description="Rows longer than cutoff_len tokens (training cuts their prompt or drops them)")

    @classmethod
    def of(cls, s: DatasetTokenStats) -> TokenStats:
        return cls.model_validate(s, from_attributes=True)


class DatasetPublic(BaseModel):
    id: str
    name: str
    format: str = Field(description="alpaca, sharegpt or messages: the shape of the uploaded rows")
    source_type: str = Field(description="json, jsonl, csv or parquet: the uploaded file's type; holdout: a "
                             "run's held-out rows (val_size), an eval set the gate does not pick by itself")
    source_filename: str
    sha256: str = Field(description="sha256 of the normalized JSONL: the same content is the same dataset")
    rows: int
    turns: int = Field(description="Assistant responses (user -> assistant exchanges) across all rows")
    characters: int = Field(description="Characters of all message contents, system prompts included")
    size_bytes: int = Field(description="Size of the normalized JSONL")
    purpose: str = Field(description="train, or eval: golden questions with reference answers")
    created_at: datetime
    token_stats: list[TokenStats] = Field(default_factory=list)

    @classmethod
    def of(cls, d: Dataset, stats: list[DatasetTokenStats] | None = None) -> DatasetPublic:
        return cls(
            **d.model_dump(exclude={"path"}),
            token_stats=[TokenStats.of(s) for s in stats or []],
        )


class LfImportedPublic(BaseModel):
    """One entry of an imported LLaMA-Factory dataset_info.json."""

    lf_name: str = Field(description="The entry's name in dataset_info.json (also the dataset's name when new)")
    created: bool = Field(description="False when the same content was already a dataset (that one is returned)")
    dataset: DatasetPublic


class DatasetPreview(BaseModel):
    id: str
    rows: list[dict[str, list[dict[str, str | int]]]] = Field(
        description="The first rows, as normalized conversations: each message has role and content, and "
        "name when given; an assistant response with weight 0 is context only (not trained)"
    )


class Health(BaseModel):
    status: str
    version: str


class MetricPublic(BaseModel):
    kind: str = Field(description="train or eval")
    step: int
    loss: float
    learning_rate: float | None
    grad_norm: float | None
    tokens_per_s: float | None = Field(
        description="Real (non-padding) tokens per second of this step, wall clock (waits for kiosks included)")
    tokens: int | None
    memory_mb: float | None = Field(description="Peak memory so far: RSS on CPU, allocated on CUDA")
    epoch: float | None
    created_at: datetime = Field(description="When the step ended (as recorded, UTC)")

    @classmethod
    def of(cls, m: RunMetric) -> MetricPublic:
        return cls.model_validate(m, from_attributes=True)


class SamplePublic(BaseModel):
    step: int = Field(description="The eval step the answer was generated at")
    row: int = Field(description="The held-out row, 1-based in the run's dataset")
    question: str
    reference: str
    answer: str = Field(description="Greedy, at most 48 new tokens, cut short when the step's time budget runs out")
    created_at: datetime

    @classmethod
    def of(cls, s: RunSample) -> SamplePublic:
        return cls.model_validate(s, from_attributes=True)


class CheckpointPublic(BaseModel):
    step: int
    created_at: datetime


class RunPublic(BaseModel):
    id: str
    name: str | None
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    dataset_id: str
    base_model_id: str
    preset: str | None
    config: dict[str, Any] = Field(description="The full config used (preset, overrides and defaults)")
    step: int
    max_steps: int | None
    loss: float | None = Field(description="Latest training loss")
    error: str | None
    estimate: dict[str, Any] | None = Field(description="Pre-flight estimate: peak memory, steps, seconds")
    result: dict[str, Any] | None
    attempts: int = Field(description="How many times a worker started it (resumes count)")
    paused_for_serving_s: float = Field(
        description="Seconds the run waited while kiosk requests were answered (serving has priority)")
    chat_template_name: str | None = Field(
        description="The chat template the run trains with and its exports carry: 'model' (the model's own) or a "
        "named one (config `template`, e.g. chatml)")
    chat_template: str | None = Field(description="That template's Jinja text")
    data_report: dict[str, Any] | None = Field(
        description="Rows truncated or dropped at cutoff_len (counts, and each row's number, size and what was "
        "cut or why it was dropped), once the trainer has read the dataset")
    holdout_dataset_id: str | None = Field(
        description="The eval dataset of the rows the run holds out (val_size), once its trainer has started: "
        "evaluate an export on it with POST /api/evaluations")
    checkpoints: list[CheckpointPublic]
    adapter_artifact_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, r: Run, extra: RunExtra) -> RunPublic:
        """No I/O: what comes from other tables is loaded beforehand, for many runs at once (runs.extras)."""
        return cls(
            id=r.id, name=r.name, status=r.status, dataset_id=r.dataset_id, base_model_id=r.base_model_id,
            preset=r.preset, config=json.loads(r.config_json), step=r.step, max_steps=r.max_steps, loss=r.loss,
            error=r.error, estimate=json.loads(r.estimate_json) if r.estimate_json else None,
            result=json.loads(r.result_json) if r.result_json else None, attempts=r.attempts,
            paused_for_serving_s=round(r.paused_for_serving_s, 3), chat_template_name=r.chat_template_name,
            chat_template=r.chat_template, data_report=json.loads(r.data_report_json) if r.data_report_json else None,
            holdout_dataset_id=r.holdout_dataset_id,
            checkpoints=[CheckpointPublic(step=c.step, created_at=c.created_at) for c in extra.checkpoints],
            adapter_artifact_id=extra.adapter_artifact_id, created_at=r.created_at, started_at=r.started_at,
            finished_at=r.finished_at,
        )


class ArtifactPublic(BaseModel):
    id: str
    kind: str = Field(description="adapter, merged, gguf or gguf-adapter")
    type: str | None = Field(description="GGUF type (f16, q8_0, q4_k_m, ...) or the file format")
    status: str = Field(description="pending, running, ready or failed")
    name: str | None
    run_id: str | None
    base_model_id: str | None
    size: int | None
    sha256: str | None
    error: str | None
    verification: dict[str, Any] | None = Field(
        description="GGUF vs torch on fixed prompts: top1_agreement, next_token_top1, mean_kl, max_kl"
    )
    stage: str | None
    progress: float | None = Field(description="0..1 while exporting")
    file: str | None = Field(description="File name inside the artifact's folder")
    modelfile: bool = Field(description="An Ollama Modelfile was generated next to the GGUF")
    attempts: int
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, a: Artifact, modelfile: bool = False) -> ArtifactPublic:
        """No I/O: whether a Modelfile exists is looked up beforehand (exports.with_modelfile)."""
        from pathlib import PurePosixPath

        file = PurePosixPath(a.path).name if a.path else None
        return cls(
            id=a.id, kind=a.kind, type=a.type, status=a.status, name=a.name, run_id=a.run_id,
            base_model_id=a.base_model_id, size=a.size, sha256=a.sha256, error=a.error,
            verification=json.loads(a.verification_json) if a.verification_json else None, stage=a.stage,
            progress=a.progress, file=file, modelfile=modelfile, attempts=a.attempts, created_at=a.created_at,
            finished_at=a.finished_at,
        )


class DeploymentPublic(BaseModel):
    id: str
    status: str = Field(description="gating (waiting for the deployment gate's evaluations), pending, active, "
                        "failed or retired")
    artifact_id: str | None
    base_model_id: str | None = Field(description="Set when a base model's own GGUF is served")
    model: str | None = Field(description="The model id kiosks see in /v1/models")
    name: str | None = Field(None, description="The deployment's name, which kiosks send as `model`; null: the "
                             "site's default deployment")
    strategy: str | None = Field(description="overlap (old and new loaded together) or drain (503 during the gap)")
    gap_ms: float | None = Field(description="Time without a model during the swap (0 for overlap)")
    load_ms: float | None
    smoke_text: str | None = Field(description="What the model answered to the smoke test")
    error: str | None
    gate: dict[str, Any] | None = Field(description="The deployment gate's record: status (passed, refused, "
                                        "waiting, not_gated, forced), reason, the evaluations and per-metric "
                                        "changes it compared")
    forced_by: str | None = Field(description="Who deployed it past the gate (force: true)")
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None

    @classmethod
    def of(cls, d: Any) -> DeploymentPublic:
        import json

        return cls(id=d.id, status=d.status, artifact_id=d.artifact_id, base_model_id=d.base_model_id, model=d.name,
                   name=d.channel, strategy=d.strategy, gap_ms=d.gap_ms, load_ms=d.load_ms, smoke_text=d.smoke_text,
                   error=d.error, gate=json.loads(d.gate_json) if d.gate_json else None, forced_by=d.forced_by,
                   created_at=d.created_at, activated_at=d.activated_at, retired_at=d.retired_at)
