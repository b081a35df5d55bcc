"""What llama.cpp loads to serve or evaluate a model: a GGUF, and for a GGUF LoRA adapter artifact
(kind `gguf-adapter`) its base GGUF with the adapter applied on it (llama.cpp's `lora_path`;
the inference server shares one loaded base between every adapter of it).

An adapter's base is fixed when the adapter is exported (`adapter_base`, kept in the artifact's
spec as `serve_base`), so an evaluation and a deployment of one adapter artifact always mean the
same weights: the base GGUF named at export (`base_artifact_id`), else the newest full-precision
(f32, f16, bf16) GGUF export of the base model itself, else the base model's own GGUF (the
bundled model's shipped file). A full-precision base is the exact base the adapter was trained
on: the adapter applied at run time then answers as the merged export of the same fine-tune does
(greedy, token for token, tests/test_adapters.py); on a quantized base it answers as that
quantization allows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, col, select

from appliance.db.status import ArtifactStatus
from appliance.db.tables import Artifact, ModelRecord
from appliance.errors import NotFoundError
from appliance.jobs.common import bad_request as _bad
from appliance.paths import Paths

FULL_PRECISION = ("f32", "f16", "bf16")


@dataclass(frozen=True)
class ServedFile:
    """`path`: the GGUF llama.cpp loads; `name`: the model kiosks see; `lora`: a GGUF LoRA adapter
    applied on `path` (None: `path` is the whole model)."""

    path: Path
    name: str
    lora: Path | None = None

    def missing(self) -> Path | None:
        """The first of the files that is not there, or None."""
        return next((p for p in (self.path, self.lora) if p is not None and not p.is_file()), None)


def _base_export(session: Session, base_model_id: str) -> Artifact | None:
    """The newest ready full-precision GGUF export of the base model itself (not of a fine-tune)."""
    for art in session.exec(select(Artifact).where(Artifact.kind == "gguf", Artifact.run_id == None,  # noqa: E711
                                                   Artifact.base_model_id == base_model_id,
                                                   Artifact.status == ArtifactStatus.ready,
                                                   col(Artifact.type).in_(FULL_PRECISION))
                            .order_by(col(Artifact.created_at).desc())):
        if art.path and not json.loads(art.spec_json or "{}").get("adapter_id"):
            return art
    return None


def adapter_base(session: Session, base_model_id: str, base_artifact_id: str | None = None) -> dict[str, str]:
    """The base an adapter of `base_model_id` is served on, as stored in the adapter artifact's spec:
    {"serve_base": data-dir-relative GGUF path, "serve_base_artifact_id": id or absent}; {} when the
    base model has no GGUF at all yet (resolved again at deployment). Raises NotFoundError /
    InvalidInputError (422, field base_artifact_id) for an artifact that is not a ready GGUF export
    of that base model itself."""
    if base_artifact_id is not None:
        art = session.get(Artifact, base_artifact_id)
        if art is None:
            raise NotFoundError(f"no artifact with id {base_artifact_id!r}")
        if (art.kind != "gguf" or art.status != ArtifactStatus.ready or art.path is None or art.run_id is not None
                or art.base_model_id != base_model_id or json.loads(art.spec_json or "{}").get("adapter_id")):
            raise _bad("base_artifact_id", f"artifact {base_artifact_id} is not a ready GGUF export of the base model "
                       f"{base_model_id} itself (a fine-tune's GGUF cannot carry another adapter)")
        return {"serve_base": art.path, "serve_base_artifact_id": art.id}
    found = _base_export(session, base_model_id)
    if found is not None and found.path is not None:
        return {"serve_base": found.path, "serve_base_artifact_id": found.id}
    model = session.get(ModelRecord, base_model_id)
    if model is not None and model.gguf_path is not None:
        return {"serve_base": model.gguf_path}
    return {}


def served_file(session: Session, paths: Paths, *, artifact_id: str | None, base_model_id: str | None) -> ServedFile:
    """What is loaded to serve (or evaluate) an artifact (a GGUF model or GGUF adapter) or a base
    model's own GGUF. Raises NotFoundError for an unknown id, InvalidInputError (422) for an
    artifact that is not a ready GGUF or GGUF adapter, a base model without GGUF, an adapter whose
    base model has none."""
    if artifact_id is not None:
        art = session.get(Artifact, artifact_id)
        if art is None:
            raise NotFoundError(f"no artifact with id {artifact_id!r}")
        if art.kind not in ("gguf", "gguf-adapter"):
            raise _bad("artifact_id", f"artifact {artifact_id} is of kind {art.kind!r}; only a GGUF model or GGUF "
                       "adapter can be served (export it first: appliance export)")
        if art.status != ArtifactStatus.ready or art.path is None:
            raise _bad("artifact_id", f"artifact {artifact_id} is {art.status}; only a ready artifact can be served")
        path = paths.resolve(art.path)
        name = path.name.removesuffix(".gguf")
        if art.kind == "gguf":
            return ServedFile(path, name)
        assert art.base_model_id is not None  # exports record the base model of a run too
        base = json.loads(art.spec_json or "{}").get("serve_base")
        if base is None:
            base = adapter_base(session, art.base_model_id).get("serve_base")
            if base is None:
                raise _bad("artifact_id", f"adapter {artifact_id} is served on a GGUF of its base model "
                           f"{art.base_model_id}, which has none: export the base model (f16) first")
        return ServedFile(paths.resolve(base), name, lora=path)
    model = session.get(ModelRecord, base_model_id)
    if model is None:
        raise NotFoundError(f"no base model with id {base_model_id!r}")
    if model.gguf_path is None:
        raise _bad("base_model_id", f"model {model.id} has no GGUF file; export it first")
    return ServedFile(paths.resolve(model.gguf_path), model.id)

