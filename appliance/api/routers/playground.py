"""The console's Playground: chat with the models the inference server serves, through the control
plane, and serve one more beside them to compare on the same prompt.

The browser stays on the console's origin (the inference port is another origin, which would need
CORS opened to it) and never holds the kiosk key: this route adds it and streams the inference
server's answer back unchanged (OpenAI chat chunks over Server-Sent Events).

To compare with a model not served now (the base model, an earlier artifact), `POST
/api/playground/compare` deploys it under the reserved name `playground`, beside the site's default
and its other names, past the deployment gate (a comparison is not a release), recorded as such;
a later comparison replaces it on that name alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from appliance.api.deps import AdminDep, RuntimeDep, SessionDep
from appliance.api.errors import responses
from appliance.api.schemas import DeploymentPublic
from appliance.bootstrap import Runtime
from appliance.db import events
from appliance.db.engine import write_session
from appliance.db.tables import Deployment
from appliance.jobs import deployments
from appliance.jobs.gate import GateRecord

PLAYGROUND = "playground"  # the deployment name comparisons are served under; refused to POST /api/deployments
COMPARISON = "playground comparison"

router = APIRouter(prefix="/api/playground", tags=["playground"], dependencies=[AdminDep],
                   responses=responses(401, 422))


class Message(BaseModel):
    role: str = Field(pattern="^(system|user|assistant)$")
    content: str = Field(max_length=20000)


class PlaygroundChat(BaseModel):
    messages: list[Message] = Field(min_length=1, max_length=100)
    max_tokens: int = Field(256, ge=1, le=2048)
    temperature: float = Field(0.7, ge=0, le=2)
    model: str | None = Field(None, max_length=200, description="A model GET /api/playground/models lists; none: "
                              "the site's default deployment")


def inference_base(runtime: Runtime) -> str:
    s = runtime.settings
    return (s.inference_url or f"http://127.0.0.1:{s.inference_port}").rstrip("/")


class Served(BaseModel):
    models: list[str] = Field(description="Ids the inference server serves now (its /v1/models): the site's "
                              "default first, then each named deployment")
    comparison: DeploymentPublic | None = Field(description=f"The newest deployment named {PLAYGROUND!r} (what "
                                                "POST /api/playground/compare asked for), with its status")


def _comparison(session: Session) -> Deployment | None:
    return session.exec(select(Deployment).where(Deployment.channel == PLAYGROUND)
                        .order_by(col(Deployment.created_at).desc(), col(Deployment.id).desc())).first()


@router.get("/models", response_model=Served, summary="The models that can be chatted with now (the inference "
            "server's /v1/models) and the comparison deployment's status",
            responses=responses(notes={503: "The inference server cannot be reached"}))
async def models(runtime: RuntimeDep, session: SessionDep) -> Served:
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            res = await client.get(f"{inference_base(runtime)}/v1/models",
                                   headers={"Authorization": f"Bearer {runtime.kiosk_key}"})
    except httpx.TransportError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"inference server unreachable: {exc}") from exc
    listed: list[dict[str, Any]] = res.json().get("data", []) if res.status_code == 200 else []
    dep = _comparison(session)
    return Served(models=[str(m.get("id")) for m in listed], comparison=DeploymentPublic.of(dep) if dep else None)


class CompareRequest(BaseModel):
    artifact_id: str | None = Field(None, description="A ready GGUF artifact (e.g. an earlier fine-tune)")
    base_model_id: str | None = Field(None, description="Or a base model's own GGUF")


@router.post("/compare", response_model=DeploymentPublic, status_code=status.HTTP_202_ACCEPTED,
             summary=f"Serve a model under the name {PLAYGROUND!r} to compare with, past the deployment gate",
             responses=responses(400, 413, 507, notes={404: "No such artifact or base model",
                                                       422: "Not a ready GGUF artifact, or its file is missing"}))
def compare(body: CompareRequest, runtime: RuntimeDep, request: Request) -> DeploymentPublic:
    """A named deployment like any other (the inference server loads it beside the models it serves and
    lists it in /v1/models once active: GET /api/playground/models shows its status). Kiosks are not
    moved: they get it only by sending `model: "playground"`. The gate is skipped, recorded with who and
    why ("playground comparison")."""
    who = f"admin token from {request.client.host if request.client else 'unknown'}"
    record = GateRecord(status="forced",
                        reason=f"{COMPARISON}: served beside the kiosks' model, past the gate, by {who}")
    dep = deployments.request_deployment(engine=runtime.engine, paths=runtime.paths, artifact_id=body.artifact_id,
                                         base_model_id=body.base_model_id, reason=COMPARISON,
                                         gate_json=record.model_dump_json(), forced_by=who, channel=PLAYGROUND)
    with write_session(runtime.engine) as session:
        events.record(session, kind="deployment.forced", entity_type="deployment", entity_id=dep.id,
                      message=f"{who} served {dep.name} for a {COMPARISON}, without the deployment gate")
    return DeploymentPublic.of(dep)


@router.post("/chat", summary="Stream a chat answer from a served model (OpenAI chunks, text/event-stream)",
             response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}},
                        **responses(400, notes={404: "`model` is not served now (GET /api/playground/models)",
                                                503: "The inference server cannot be reached"})})
async def chat(body: PlaygroundChat, runtime: RuntimeDep) -> StreamingResponse:
    client = httpx.AsyncClient(timeout=httpx.Timeout(10, read=300))
    payload = {**body.model_dump(exclude_none=True), "stream": True}
    request = client.build_request("POST", f"{inference_base(runtime)}/v1/chat/completions", json=payload,
                                   headers={"Authorization": f"Bearer {runtime.kiosk_key}"})
    try:
        upstream = await client.send(request, stream=True)
    except httpx.TransportError as exc:
        await client.aclose()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"inference server unreachable: {exc}") from exc
    if upstream.status_code == status.HTTP_404_NOT_FOUND:  # the one 404 of the endpoint: model_not_found
        await upstream.aclose()
        await client.aclose()
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"model {body.model!r} is not served now (GET /api/playground/models lists those "
                            f"that are; POST /api/playground/compare serves another as {PLAYGROUND!r})")

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()
            await client.aclose()

    media = upstream.headers.get("content-type", "text/event-stream")
    return StreamingResponse(relay(), status_code=upstream.status_code, media_type=media,
                             headers={"Cache-Control": "no-cache"})
