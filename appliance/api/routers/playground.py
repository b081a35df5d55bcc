"""The console's Playground: chat with the deployed model through the control plane.

The browser stays on the console's origin (the inference port is another origin, which would need
CORS opened to it) and never holds the kiosk key: this route adds it and streams the inference
server's answer back unchanged (OpenAI chat chunks over Server-Sent Events)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, HTTPException, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from appliance.api.deps import AdminDep, RuntimeDep
from appliance.api.errors import responses
from appliance.bootstrap import Runtime

router = APIRouter(prefix="/api/playground", tags=["playground"], dependencies=[AdminDep],
                   responses=responses(401, 422))


class Message(BaseModel):
    role: str = Field(pattern="^(system|user|assistant)$")
    content: str = Field(max_length=20000)


class PlaygroundChat(BaseModel):
    messages: list[Message] = Field(min_length=1, max_length=100)
    max_tokens: int = Field(256, ge=1, le=2048)
    temperature: float = Field(0.7, ge=0, le=2)


def inference_base(runtime: Runtime) -> str:
    s = runtime.settings
    return (s.inference_url or f"http://127.0.0.1:{s.inference_port}").rstrip("/")


class Served(BaseModel):
    models: list[str] = Field(description="Ids the inference server lists in /v1/models (the deployed model)")


@router.get("/model", response_model=Served, summary="The model the inference server serves now (its /v1/models)",
            responses=responses(notes={503: "The inference server cannot be reached"}))
async def model(runtime: RuntimeDep) -> Served:
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            res = await client.get(f"{inference_base(runtime)}/v1/models",
                                   headers={"Authorization": f"Bearer {runtime.kiosk_key}"})
    except httpx.TransportError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"inference server unreachable: {exc}") from exc
    listed: list[dict[str, Any]] = res.json().get("data", []) if res.status_code == 200 else []
    return Served(models=[str(m.get("id")) for m in listed])


@router.post("/chat", summary="Stream a chat answer from the deployed model (OpenAI chunks, text/event-stream)",
             response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}},
                        **responses(400, notes={503: "The inference server cannot be reached"})})
async def chat(body: PlaygroundChat, runtime: RuntimeDep) -> StreamingResponse:
    client = httpx.AsyncClient(timeout=httpx.Timeout(10, read=300))
    payload = {**body.model_dump(), "stream": True}
    request = client.build_request("POST", f"{inference_base(runtime)}/v1/chat/completions", json=payload,
                                   headers={"Authorization": f"Bearer {runtime.kiosk_key}"})
    try:
        upstream = await client.send(request, stream=True)
    except httpx.TransportError as exc:
        await client.aclose()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"inference server unreachable: {exc}") from exc

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
