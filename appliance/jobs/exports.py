"""Export jobs and the artifacts table: request (everything knowable up front is checked here, so a
bad request is a 422 at once and records nothing), claim, progress, delete; the worker's side (the
child's spec, publishing what it made) is appliance/jobs/export_work.py.

An export is restartable from scratch, so a worker that died mid-export simply leaves it to be
claimed again; its half-written work folder is removed first. Files reach `artifacts/<id>/` only by
a rename of the complete work folder, after the child said `done` and passed verification. The queue
(`QUEUE`) follows the one contract of appliance/jobs/queue.py.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from appliance import fsutil
from appliance.db import events
from appliance.db.engine import write_session
from appliance.db.status import ArtifactStatus, RunStatus
from appliance.db.tables import Artifact, Deployment, ModelRecord, Run
from appliance.errors import ConflictError, NotFoundError
from appliance.jobs.common import bad_request as _bad
from appliance.jobs.common import now as _now
from appliance.jobs.queue import Beat, JobQueue
from appliance.models.inspect import read_chat_template
from appliance.models.served import adapter_base
from appliance.paths import Paths

KINDS = ("adapter", "merged", "gguf", "gguf-adapter")
ADAPTER_TYPES = ("f32", "f16")


# --- the queue (appliance/jobs/queue.py) ----------------------------------------------------


def _on_claim(art: Artifact) -> None:
    art.started_at, art.stage, art.progress = _now(), "starting", 0.0


def _on_release(art: Artifact) -> None:
    art.stage, art.progress = "queued", 0.0


def _on_beat(art: Artifact, beat: Beat) -> None:
    if beat.stage is not None:
        art.stage = beat.stage
    if beat.progress is not None:
        art.progress = beat.progress


# An export taken back restarts from scratch (its work folder is removed first).
QUEUE = JobQueue(table=Artifact, entity="artifact", waiting=ArtifactStatus.pending, running=ArtifactStatus.running,
                 succeeded=ArtifactStatus.ready, failed=ArtifactStatus.failed, restart="export will restart",
                 on_claim=_on_claim, on_release=_on_release, on_beat=_on_beat)


def get_artifact(session: Session, artifact_id: str) -> Artifact:
    """The artifact; NotFoundError (404) when there is none."""
    return QUEUE.get(session, artifact_id)


def list_artifacts(session: Session, *, kind: str | None = None, run_id: str | None = None) -> list[Artifact]:
    query = select(Artifact).order_by(col(Artifact.created_at).desc())
    if kind:
        query = query.where(Artifact.kind == kind)
    if run_id:
        query = query.where(Artifact.run_id == run_id)
    return list(session.exec(query))


# --- requests ---------------------------------------------------------------------------------


def request_export(*, engine: Engine, paths: Paths, run_id: str | None = None, base_model_id: str | None = None,
                   out_type: str | None = None, kind: str = "gguf", adapter_id: str | None = None,
                   base_artifact_id: str | None = None) -> tuple[Artifact, bool]:
    """Queue an export of a run, a base model, or an adapter artifact (`adapter_id`: one imported with
    `appliance models import-adapter`, or a run's). A GGUF adapter is served on a base GGUF fixed
    now (appliance/models/served.py adapter_base; `base_artifact_id` names one). Returns (artifact,
    created): the same export already pending, running or ready is returned instead of being made twice."""
    if base_artifact_id is not None and kind != "gguf-adapter":
        raise _bad("base_artifact_id", "base_artifact_id is the base GGUF a GGUF adapter is served on: only with "
                   "kind gguf-adapter")
    imported: Artifact | None = None
    if adapter_id is not None:
        if run_id is not None or base_model_id is not None:
            raise _bad("adapter_id", "give exactly one of run_id, base_model_id or adapter_id")
        with Session(engine) as session:
            imported = get_artifact(session, adapter_id)
        if imported.kind != "adapter" or imported.status != ArtifactStatus.ready or imported.path is None:
            raise _bad("adapter_id", f"artifact {adapter_id} is a {imported.status} {imported.kind}, "
                       "not a ready adapter")
        run_id = imported.run_id
        base_model_id = None if run_id is not None else imported.base_model_id
        if run_id is not None:
            imported = None  # a run's own adapter: exported as the run
    from appliance.export.converter import exporter_for
    from appliance.export.gguf_hf import ExportError
    from appliance.export.quantize import check_type

    if (run_id is None) == (base_model_id is None):
        raise _bad("run_id", "give exactly one of run_id or base_model_id")
    if kind not in ("gguf", "gguf-adapter"):
        raise _bad("kind", f"kind must be 'gguf' or 'gguf-adapter', not {kind!r}")
    if kind == "gguf-adapter":
        out_type = (out_type or "f32").lower()
        if out_type not in ADAPTER_TYPES:
            raise _bad("type", f"a GGUF adapter is f32 or f16, not {out_type!r}")
        if run_id is None and imported is None:
            raise _bad("run_id", "a GGUF adapter is exported from a run or an adapter (adapter_id)")
    else:
        try:
            out_type = check_type(out_type or "q8_0")
        except ExportError as exc:
            raise _bad("type", str(exc)) from exc
    with Session(engine) as session:
        adapter_dir: Path | None = None
        template: tuple[str | None, str | None] = (None, None)  # the run's (name, text)
        if run_id is not None:
            run = session.get(Run, run_id)
            if run is None:
                raise NotFoundError(f"no run with id {run_id!r}")
            if run.status != RunStatus.succeeded:
                raise _bad("run_id", f"run {run_id} is {run.status}; only a succeeded run can be exported")
            adapter = session.exec(
                select(Artifact).where(Artifact.run_id == run_id, Artifact.kind == "adapter")).first()
            if adapter is None or adapter.path is None:
                raise _bad("run_id", f"run {run_id} has no adapter artifact")
            adapter_dir = paths.resolve(adapter.path)
            _check_adapter(adapter_dir, adapter.sha256)
            base_model_id = run.base_model_id
            name = run.name or run_id
            template = (run.chat_template_name, run.chat_template)
        if imported is not None:
            assert imported.path is not None
            adapter_dir = paths.resolve(imported.path)
            _check_adapter(adapter_dir, imported.sha256)
            name = imported.name or imported.id
            imported_template = json.loads(imported.spec_json or "{}").get("chat_template")
            template = ("adapter's own", imported_template)
        model = session.get(ModelRecord, base_model_id)
        if model is None:
            raise NotFoundError(f"no base model with id {base_model_id!r}")
        if model.hf_path is None:
            raise _bad("base_model_id", f"model {model.id} has no full-precision (HF) copy to export from")
        try:
            exporter = exporter_for(paths.resolve(model.hf_path))
        except ExportError as exc:
            raise _bad("base_model_id", str(exc)) from exc
        if kind == "gguf-adapter" and exporter != "writer":  # GGUF adapters are written by our writer only
            raise _bad("kind", f"a GGUF adapter of a {model.architecture} model cannot be written; export a merged "
                       "GGUF instead (kind gguf, e.g. type q8_0)")
        if run_id is None and imported is None:
            name = model.id
        elif kind == "gguf-adapter" and template[1] not in (None, read_chat_template(paths.resolve(model.hf_path))):
            raise _bad("kind", f"{f'run {run_id}' if run_id else f'adapter {adapter_id}'} trained with the "
                       f"{template[0]} chat template, not the base "
                       "model's own; a GGUF adapter is served on the base model's GGUF and its template, so prompts "
                       "would not match training. Export a merged GGUF instead (kind gguf, e.g. type q8_0)")
    with write_session(engine) as session:
        spec = {"adapter_dir": str(adapter_dir) if adapter_dir else None}
        if imported is not None:  # an imported adapter's export: told apart from the base's by its spec
            spec.update(adapter_id=imported.id, chat_template=template[1])
        if kind == "gguf-adapter":
            assert base_model_id is not None
            spec.update(adapter_base(session, base_model_id, base_artifact_id))
        for same in session.exec(
            select(Artifact).where(Artifact.kind == kind, Artifact.type == out_type, Artifact.run_id == run_id,
                                   Artifact.base_model_id == base_model_id,
                                   col(Artifact.status).in_(["pending", "running", "ready"]))
        ):
            earlier = json.loads(same.spec_json or "{}")
            if ((run_id is not None or earlier.get("adapter_id") == spec.get("adapter_id"))
                    and earlier.get("serve_base") == spec.get("serve_base")):
                return same, False
        art = Artifact(id=f"art_{uuid.uuid4().hex[:12]}", kind=kind, type=out_type, status="pending", run_id=run_id,
                       base_model_id=base_model_id, name=name, progress=0.0, stage="queued",
                       spec_json=json.dumps(spec))
        session.add(art)
        events.record(session, kind="artifact.requested", entity_type="artifact", entity_id=art.id,
                      message=f"{kind} {out_type} export of {run_id or spec.get('adapter_id') or base_model_id} queued")
        session.flush()
        session.expunge(art)
    return art, True


def _check_adapter(adapter_dir: Path, sha256: str | None) -> None:
    weights = adapter_dir / "adapter_model.safetensors"
    if not (adapter_dir / "adapter_config.json").is_file() or not weights.is_file():
        raise _bad("run_id", f"the run's adapter is missing from {adapter_dir}")
    if sha256 and fsutil.sha256_file(weights) != sha256:
        raise _bad("run_id", f"the run's adapter {weights} does not match its recorded sha256 (corrupt)")


# --- deletion ---------------------------------------------------------------------------------


def delete_artifact(*, engine: Engine, paths: Paths, artifact_id: str) -> None:
    with write_session(engine) as session:
        art = get_artifact(session, artifact_id)
        if art.kind == "adapter":
            raise ConflictError(f"artifact {artifact_id} is a run's adapter; delete the run instead")
        if art.status == ArtifactStatus.running:
            raise ConflictError(f"artifact {artifact_id} is being exported; wait for it to finish")
        used = session.exec(select(Deployment).where(Deployment.artifact_id == artifact_id,
                                                     col(Deployment.status).in_(["pending", "active"]))).first()
        if used is not None:
            raise ConflictError(f"artifact {artifact_id} is deployed ({used.id}); deploy another model first")
        if session.exec(select(Deployment).where(Deployment.artifact_id == artifact_id)).first() is not None:
            raise ConflictError(f"artifact {artifact_id} is in the deployment history; it is kept for rollback")
        served_on = [a.id for a in session.exec(select(Artifact).where(Artifact.kind == "gguf-adapter",
                                                                      Artifact.base_model_id == art.base_model_id))
                     if json.loads(a.spec_json or "{}").get("serve_base_artifact_id") == artifact_id]
        if served_on:
            raise ConflictError(f"artifact {artifact_id} is the base GGUF that the LoRA adapter(s) "
                                f"{', '.join(sorted(served_on))} are served and evaluated on; delete them first")
        session.delete(art)
        events.record(session, kind="artifact.deleted", entity_type="artifact", entity_id=artifact_id,
                      message="artifact deleted")
    shutil.rmtree(paths.artifact_dir(artifact_id), ignore_errors=True)


def with_modelfile(*, paths: Paths, arts: list[Artifact]) -> set[str]:
    """Ids of the GGUF artifacts that have an Ollama Modelfile next to their file: one stat per GGUF,
    done here, so the response schema (ArtifactPublic.of) is handed the fact and reads no disk."""
    found = set()
    for art in arts:
        if art.kind == "gguf" and art.path and (paths.root / art.path).parent.joinpath("Modelfile").is_file():
            found.add(art.id)
    return found


def folder_of(*, paths: Paths, art: Artifact) -> Path | None:
    """A ready folder artifact's folder (a LoRA adapter, a merged model); None for a file artifact.
    ConflictError (409) when not ready; NotFoundError when the folder is gone."""
    if art.kind not in ("adapter", "merged"):
        return None
    if art.status != ArtifactStatus.ready or art.path is None:
        raise ConflictError(f"artifact {art.id} is {art.status}; only a ready artifact can be downloaded")
    path = paths.resolve(art.path)
    if not path.is_dir():
        raise NotFoundError(f"artifact {art.id}'s folder is missing from the data directory")
    return path


def file_of(*, paths: Paths, art: Artifact) -> Path:
    """The file a download serves: the GGUF, or an adapter's safetensors."""
    if art.status != ArtifactStatus.ready or art.path is None:
        raise ConflictError(f"artifact {art.id} is {art.status}; only a ready artifact can be downloaded")
    path = paths.resolve(art.path)
    if path.is_dir():
        weights = path / "adapter_model.safetensors"
        if art.kind == "adapter" and weights.is_file():
            return weights
        raise ConflictError(f"artifact {art.id} is a folder ({art.kind}); export it as GGUF to download one file")
    if not path.is_file():
        raise NotFoundError(f"artifact {art.id}'s file is missing from the data directory")
    return path
