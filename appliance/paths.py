"""Paths: the single source of truth for the data directory layout.

    <data_dir>/
      appliance.db            SQLite database (WAL)
      secrets/                admin_token, kiosk_key (0600)
      datasets/<sha256>.jsonl normalized datasets, content-addressed
      models/<model_id>/      base models: source.gguf and/or hf/ (safetensors, tokenizer)
      runs/<run_id>/          training output (checkpoints, adapter)
      artifacts/<id>/         exported files
      tmp/                    work in progress; same filesystem, so a finished file is renamed in
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

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / _check_id(run_id)

    def artifact_dir(self, artifact_id: str) -> Path:
        return self.root / "artifacts" / _check_id(artifact_id)

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
        for d in (self.root, self.datasets, self.models, self.tmp, self.root / "runs", self.root / "artifacts"):
            d.mkdir(parents=True, exist_ok=True)
        self.secrets.mkdir(mode=0o700, parents=True, exist_ok=True)
