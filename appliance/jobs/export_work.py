"""The worker's side of an export (appliance/jobs/exports.py holds the request and the records): the
export child's spec for a claimed artifact, then publishing what the child made, or recording why it failed.

Files reach `artifacts/<id>/` only by a rename of the complete work folder, fsynced, after the child
said `done` and passed verification; a merged model made on the way becomes an artifact of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from appliance import fsutil
from appliance.child_protocol import ExportDone, ExportSpec, ServingSpec
from appliance.db.engine import write_session
from appliance.db.tables import Artifact, ModelRecord, Run
from appliance.jobs.common import now as _now
from appliance.jobs.exports import QUEUE, get_artifact
from appliance.paths import Paths


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
        artifact_id=art.id, kind=art.kind, type=art.type, name=fsutil.safe_name(art.name or art.id),  # type: ignore[arg-type]
        work_dir=paths.export_work_dir(art.id), base_hf_dir=paths.resolve(model.hf_path),
        adapter_dir=extra.get("adapter_dir"),
        merged_dir=paths.resolve(merged.path) if merged is not None and merged.path else None,
        # The template the run trained with goes into the merged folder, the GGUF and the Modelfile.
        chat_template=run.chat_template if run is not None else extra.get("chat_template"), serving=serving,
    )


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
