from __future__ import annotations

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlmodel import Session

from appliance import fsutil
from appliance.api import tarstream
from appliance.api.deps import AdminDep, RuntimeDep, SessionDep
from appliance.api.errors import responses
from appliance.api.schemas import ArtifactPublic
from appliance.bootstrap import Runtime
from appliance.db.tables import Artifact
from appliance.errors import NotFoundError
from appliance.export.quantize import ALL_TYPES
from appliance.jobs import exports

router = APIRouter(prefix="/api/artifacts", tags=["artifacts"], dependencies=[AdminDep], responses=responses(401, 422))
NOT_FOUND = {404: "No such artifact"}


class ExportRequest(BaseModel):
    run_id: str | None = Field(None, description="Export a succeeded run (its adapter merged into the base)")
    base_model_id: str | None = Field(None, description="Or export a base model as it is")
    type: str | None = Field(None, description=f"GGUF type, default q8_0: one of {', '.join(ALL_TYPES)}; "
                                               "for kind gguf-adapter f32 (default) or f16")
    kind: str = Field("gguf", description="gguf (a whole model) or gguf-adapter (the LoRA alone, for lora_path)")
    adapter_id: str | None = Field(None, description="Or export an adapter artifact (one imported with "
                                                     "POST /api/models/{id}/adapters), merged into its base")
    base_artifact_id: str | None = Field(None, description="kind gguf-adapter: the base GGUF (an export of the base "
                                         "model itself) the adapter is served and evaluated on; default: the newest "
                                         "f32/f16/bf16 export of the base model, else its own GGUF")


@router.post("/export", response_model=ArtifactPublic, status_code=status.HTTP_202_ACCEPTED,
             summary="Queue a GGUF export; the worker makes it",
             responses=responses(400, 413, 507, notes={
                 404: "No such run or base model",
                 422: "Run not succeeded, adapter missing or corrupt, unknown type or unsupported architecture"}))
def export(body: ExportRequest, runtime: RuntimeDep) -> ArtifactPublic:
    art, _created = exports.request_export(engine=runtime.engine, paths=runtime.paths, run_id=body.run_id,
                                           base_model_id=body.base_model_id, out_type=body.type, kind=body.kind,
                                           adapter_id=body.adapter_id, base_artifact_id=body.base_artifact_id)
    with Session(runtime.engine) as session:
        return _public(runtime, [exports.get_artifact(session, art.id)])[0]


def _public(runtime: Runtime, arts: list[Artifact]) -> list[ArtifactPublic]:
    """The disk is read here, once for all of them (a Modelfile next to each GGUF), not by the schema."""
    modelfiles = exports.with_modelfile(paths=runtime.paths, arts=arts)
    return [ArtifactPublic.of(a, modelfile=a.id in modelfiles) for a in arts]


@router.get("", response_model=list[ArtifactPublic], summary="List artifacts, newest first")
def list_(session: SessionDep, runtime: RuntimeDep, kind: str | None = Query(None), run_id: str | None = Query(None),
          ) -> list[ArtifactPublic]:
    return _public(runtime, exports.list_artifacts(session, kind=kind, run_id=run_id))


@router.get("/{artifact_id}", response_model=ArtifactPublic, summary="One artifact",
            responses=responses(notes=NOT_FOUND))
def show(artifact_id: str, session: SessionDep, runtime: RuntimeDep) -> ArtifactPublic:
    return _public(runtime, [exports.get_artifact(session, artifact_id)])[0]


@router.get("/{artifact_id}/download", summary="Download the file (range requests supported), or a folder "
            "artifact (a LoRA adapter, a merged model) as one tar of its files",
            response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}, "application/x-tar": {}}},
                       206: {"description": "Partial content"},
                       **responses(notes={**NOT_FOUND, 409: "Not ready"})})
def download(artifact_id: str, session: SessionDep, runtime: RuntimeDep) -> Response:
    art = exports.get_artifact(session, artifact_id)
    folder = exports.folder_of(paths=runtime.paths, art=art)
    if folder is not None:  # the weights alone are no adapter: peft needs adapter_config.json beside them
        name = fsutil.safe_name(art.name or art.id)
        parts = tarstream.members(folder, f"{name}.{art.kind}")
        return StreamingResponse(tarstream.stream(parts), media_type="application/x-tar", headers={
            "Content-Length": str(tarstream.length(parts)),
            "Content-Disposition": f'attachment; filename="{name}.{art.kind}.tar"'})
    path = exports.file_of(paths=runtime.paths, art=art)
    return FileResponse(path, media_type="application/octet-stream", filename=path.name,
                        headers={"X-Checksum-Sha256": art.sha256 or ""})


@router.get("/{artifact_id}/modelfile", summary="The Ollama Modelfile generated next to a GGUF",
            response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {}}}, **responses(notes={**NOT_FOUND, 409: "Not ready"})})
def modelfile(artifact_id: str, session: SessionDep, runtime: RuntimeDep) -> PlainTextResponse:
    art = exports.get_artifact(session, artifact_id)
    path = exports.file_of(paths=runtime.paths, art=art).parent / "Modelfile"
    if art.kind != "gguf" or not path.is_file():
        raise NotFoundError(f"artifact {artifact_id} has no Modelfile")
    return PlainTextResponse(path.read_text())


@router.delete("/{artifact_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete an artifact and its files",
               responses=responses(507, notes={**NOT_FOUND, 409: "Running, deployed, a run's adapter, or the base "
                                                                  "GGUF LoRA adapters are served on"}))
def delete(artifact_id: str, runtime: RuntimeDep) -> Response:
    exports.delete_artifact(engine=runtime.engine, paths=runtime.paths, artifact_id=artifact_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
