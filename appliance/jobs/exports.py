"""Export jobs and the artifacts table: request (everything knowable up front is checked here, so a
bad request is a 422 at once and records nothing), claim, progress, finish, delete.

An export is restartable from scratch, so a worker that died mid-export simply leaves it to be
claimed again; its half-written work folder is removed first. Files reach `artifacts/<id>/` only by
a rename of the complete work folder, after the child said `done` and passed verification. The queue
(`QUEUE`) follows the one contract of appliance/jobs/queue.py.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from appliance import fsutil
from appliance.child_protocol import ExportDone, ExportSpec, ServingSpec
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
    from appliance.export.gguf_write import ExportError
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


def spec_for(*, engine: Engine, paths: Paths, art: Artifact, serving: ServingSpec | None) -> ExportSpec:
    """The export child's spec for a claimed artifact."""
    with Session(engine) as session:
        model = session.get(ModelRecord, art.base_model_id)
        assert model is not None and model.hf_path is not None
        merged, run = None, session.get(Run, art.run_id) if art.run_id is not None else None
        if art.run_id is not None:
            merged = session.exec(select(Artifact).where(Artifact.run_id == art.run_id, Artifact.kind == "merged",
                                                         Artifact.status == "ready")).first()
    extra = json.loads(art.spec_json or "{}")  # what request_export recorded
    return ExportSpec(
        artifact_id=art.id, kind=art.kind, type=art.type, name=_safe_name(art.name or art.id),  # type: ignore[arg-type]
        work_dir=paths.export_work_dir(art.id), base_hf_dir=paths.resolve(model.hf_path),
        adapter_dir=extra.get("adapter_dir"),
        merged_dir=paths.resolve(merged.path) if merged is not None and merged.path else None,
        # The template the run trained with goes into the merged folder, the GGUF and the Modelfile.
        chat_template=run.chat_template if run is not None else extra.get("chat_template"), serving=serving,
    )


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip(".-")
    return cleaned[:64] or "model"


def finish(*, engine: Engine, paths: Paths, artifact_id: str, done: ExportDone | None, error: str | None = None,
           verification: dict[str, Any] | None = None) -> str:
    """Publish what the child said `done` with (ready), or record why it failed (with the verification
    figures of a file that failed it). An export taken back meanwhile keeps its status."""
    work = paths.export_work_dir(artifact_id)
    if done is not None:
        try:
            return _publish(engine=engine, paths=paths, artifact_id=artifact_id, work=work, done=done)
        except OSError as exc:
            error = fsutil.describe_no_space(exc, work) or f"could not store the export: {exc}"
        verification = done.verification
    shutil.rmtree(work, ignore_errors=True)
    with write_session(engine) as session:
        art = QUEUE.still_running(session, artifact_id)
        if art is None:
            return str(get_artifact(session, artifact_id).status)
        art.verification_json = json.dumps(verification) if verification else art.verification_json
        QUEUE.end(session, art, ok=False, message=error or "the export process failed")
        return str(art.status)


def _publish(*, engine: Engine, paths: Paths, artifact_id: str, work: Path, done: ExportDone) -> str:
    main = work / done.main
    size, digest = main.stat().st_size, fsutil.sha256_file(main)
    merged_id = None
    merged_src = work / (done.merged or "merged")
    if done.merged and merged_src.is_dir():
        merged_id = f"art_{uuid.uuid4().hex[:12]}"
        merged_dst = paths.artifact_dir(merged_id)
        merged_dst.parent.mkdir(parents=True, exist_ok=True)
        weights = sorted(merged_src.glob("*.safetensors"))
        merged_size = sum(w.stat().st_size for w in weights)
        merged_sha = fsutil.sha256_file(weights[0]) if len(weights) == 1 else None
        os.rename(merged_src, merged_dst)
    final = paths.artifact_dir(artifact_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    for f in work.iterdir():
        if f.is_dir():
            shutil.rmtree(f, ignore_errors=True)  # nothing but the listed files is published
        elif f.name not in done.files:
            f.unlink()
    for f in work.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    os.rename(work, final)
    fsutil.fsync_dir(final.parent)
    with write_session(engine) as session:
        art = get_artifact(session, artifact_id)
        art.path = paths.rel(final / done.main)
        art.size, art.sha256 = size, digest
        art.verification_json = json.dumps(done.verification)
        art.progress, art.stage = 1.0, "done"
        fig = done.verification
        QUEUE.end(session, art, ok=True,
                  message=f"{art.kind} {art.type} ready: {size} bytes, top-1 agreement "
                          f"{fig.get('top1_agreement', 0):.1%}")
        if merged_id is not None:
            session.add(Artifact(id=merged_id, kind="merged", type="safetensors-f32", status="ready",
                                 run_id=art.run_id, base_model_id=art.base_model_id, name=art.name,
                                 path=paths.rel(paths.artifact_dir(merged_id)), size=merged_size, sha256=merged_sha,
                                 progress=1.0, stage="done", finished_at=_now()))
        return str(art.status)


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
