"""Paths: the single source of truth for the data directory layout.

    <data_dir>/
      appliance.db            SQLite database (WAL)
      secrets/                admin_token, kiosk_key (0600)
      datasets/<sha256>.jsonl normalized datasets, content-addressed
      models/<model_id>/      base models: source.gguf and/or hf/ (safetensors, tokenizer)
      runs/<run_id>/          training output (RunDir: spec.json, config.json, train.log, tmp/,
                              checkpoints/step-NNNNNNN/, adapter/)
      artifacts/<id>/         exported files
      evaluations/<id>/       an evaluation (EvaluationDir: spec.json, eval.log, questions.jsonl, result.json)
      logs/export-<id>.log    an export child's stderr, all attempts
      tmp/                    work in progress; same filesystem, so a finished file is renamed in
        export-<id>/          an export's work folder; export-<id>.json its child's spec
      serving.lock            held by the inference server while a kiosk request generates
      background.lock         held by the worker while a training/export child lives
      worker.lock             held by the worker process while it lives (its health check)
      inference-loading       present only while the inference server loads a model
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class UnsafeIdError(ValueError):
    """An id that could escape its folder (a path separator, '..', an empty string)."""


def _check_id(value: str) -> str:
    if not _ID_RE.match(value) or ".." in value:
        raise UnsafeIdError(f"not a valid id: {value!r}")
    return value


@dataclass(frozen=True)
class CheckpointDir:
    """One complete training checkpoint (written aside and renamed in by the trainer)."""

    root: Path

    @property
    def state(self) -> Path:
        """JSON: {"step": int, ...the loop's own state}."""
        return self.root / "state.json"

    @property
    def optimizer(self) -> Path:
        return self.root / "optimizer.pt"

    @property
    def scheduler(self) -> Path:
        return self.root / "scheduler.pt"

    @property
    def rng(self) -> Path:
        return self.root / "rng.pt"

    @property
    def adapter(self) -> Path:
        """A peft adapter folder."""
        return self.root / "adapter"

    def complete(self) -> bool:
        """Whether every part a resume needs is there (a folder with a part missing crashes a resume)."""
        return all(p.exists() for p in (self.state, self.optimizer, self.rng, self.adapter))


@dataclass(frozen=True)
class RunDir:
    """The layout of one run's folder. The trainer child builds it from the spec's `run_dir`; everyone
    else gets it from `Paths.run()`."""

    root: Path

    @property
    def spec(self) -> Path:
        """The trainer child's spec (appliance/child_protocol.py TrainSpec), rewritten at each attempt."""
        return self.root / "spec.json"

    @property
    def config(self) -> Path:
        """The run's resolved training config, for people (the trainer reads the spec)."""
        return self.root / "config.json"

    @property
    def log(self) -> Path:
        """The trainer child's stderr, all attempts."""
        return self.root / "train.log"

    @property
    def tmp(self) -> Path:
        """Half-written checkpoints and adapters; emptied before each attempt."""
        return self.root / "tmp"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> CheckpointDir:
        return CheckpointDir(self.checkpoints / f"step-{step:07d}")

    @property
    def adapter(self) -> Path:
        """The finished run's peft adapter folder."""
        return self.root / "adapter"


@dataclass(frozen=True)
class EvaluationDir:
    """evaluations/<id>/: what an evaluation job writes (appliance/evaluation/job.py)."""

    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def log(self) -> Path:
        return self.root / "eval.log"

    @property
    def questions(self) -> Path:
        """One scored question per line, appended as each is scored: what a resumed attempt skips."""
        return self.root / "questions.jsonl"

    @property
    def result(self) -> Path:
        """The whole EvaluationResult, renamed into place when the evaluation is complete."""
        return self.root / "result.json"


@dataclass(frozen=True)
class Paths:
    root: Path

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> Paths:
        return cls(data_dir.expanduser().resolve())

    @property
    def db(self) -> Path:
        return self.root / "appliance.db"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db}"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def admin_token(self) -> Path:
        return self.secrets / "admin_token"

    @property
    def kiosk_key(self) -> Path:
        return self.secrets / "kiosk_key"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    def dataset_file(self, sha256: str) -> Path:
        return self.datasets / f"{_check_id(sha256)}.jsonl"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_dir(self, model_id: str) -> Path:
        return self.models / _check_id(model_id)

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / _check_id(run_id)

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.run_dir(run_id))

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def artifact_dir(self, artifact_id: str) -> Path:
        return self.artifacts / _check_id(artifact_id)

    def evaluation(self, evaluation_id: str) -> EvaluationDir:
        return EvaluationDir(self.root / "evaluations" / _check_id(evaluation_id))

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def export_log(self, artifact_id: str) -> Path:
        """An export child's stderr, all attempts."""
        return self.logs / f"export-{_check_id(artifact_id)}.log"

    def export_work_dir(self, artifact_id: str) -> Path:
        """Where an export child writes; renamed to artifact_dir() once complete and verified."""
        return self.tmp / f"export-{_check_id(artifact_id)}"

    def export_spec(self, artifact_id: str) -> Path:
        """The export child's spec (appliance/child_protocol.py ExportSpec)."""
        return self.tmp / f"export-{_check_id(artifact_id)}.json"

    @property
    def serving_lock(self) -> Path:
        """Kiosks first (appliance/serving.py): held while kiosk requests are in flight."""
        return self.root / "serving.lock"

    @property
    def background_lock(self) -> Path:
        """Kiosks first (appliance/serving.py): held by the worker while a child (training, export) lives."""
        return self.root / "background.lock"

    @property
    def worker_lock(self) -> Path:
        """Held by the worker process while it lives (`appliance health worker` asks the kernel)."""
        return self.root / "worker.lock"

    @property
    def inference_loading(self) -> Path:
        """Names the deployment the inference server is loading (appliance/inference/loading.py)."""
        return self.root / "inference-loading"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def rel(self, path: Path) -> str:
        """Path stored in the database: relative to the data dir, so the dir can move."""
        return str(path.resolve().relative_to(self.root))

    def resolve(self, stored: str) -> Path:
        """Inverse of rel(); refuses anything that would land outside the data dir."""
        path = (self.root / stored).resolve()
        if not path.is_relative_to(self.root):
            raise UnsafeIdError(f"path outside the data directory: {stored!r}")
        return path

    def ensure(self) -> None:
        for d in (self.root, self.datasets, self.models, self.tmp, self.runs, self.artifacts, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.secrets.mkdir(mode=0o700, parents=True, exist_ok=True)
