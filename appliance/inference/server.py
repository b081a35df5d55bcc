"""The kiosk-facing inference server (port 8080): OpenAI-compatible chat and text completions on an
embedded llama-cpp-python model, with zero-downtime hot swap driven by the deployments table (the
model manager: appliance/inference/manager.py).

Only kiosk routes live here (`/v1/*` with the kiosk key; `/healthz`, `/readyz`, `/metrics` open):
no admin route is reachable on this port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance import __version__
from appliance.bootstrap import Runtime
from appliance.inference import messages as kiosk_messages
from appliance.inference import openapi, protocol
from appliance.inference.calls import chat_call, completion_call
from appliance.inference.engine import END, Job
from appliance.inference.kiosk_page import kiosk_router
from appliance.inference.manager import Inference, Unavailable, UnknownModel
from appliance.inference.metrics import Metrics
from appliance.inference.protocol import ChatRequest, CompletionRequest, RequestError

log = logging.getLogger("appliance.inference")


# --- the app -------------------------------------------------------------------------------------


def _error(status: int, message: str, kind: str, code: str | None = None, param: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error on this port in OpenAI's shape: kiosks' clients read `error.message`."""
    return JSONResponse(protocol.error_body(message, kind, param, code), status_code=status, headers=headers)


class KioskAuth:
    """The kiosk key on `/v1/*`, and request counts by endpoint and status.

    A plain ASGI middleware: Starlette's `@app.middleware("http")` passes every chunk of a streamed
    answer through an extra in-memory stream and task switch, per token here."""

    def __init__(self, app: ASGIApp, key: bytes, metrics: Metrics) -> None:
        self.app, self.key, self.metrics = app, key, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if scope["method"] != "OPTIONS":
            headers = Headers(scope=scope)
            header = headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else headers.get("x-api-key", "")
            if not secrets.compare_digest(given.encode(), self.key):
                self.metrics.requests.inc(endpoint=path, code="401")
                await _error(401, "missing or wrong kiosk key", "invalid_request_error",
                             "invalid_api_key")(scope, receive, send)
                return
        status = 500  # unless the app starts a response

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.requests.inc(endpoint=path, code=str(status))
            if status >= 400:
                self.metrics.errors.inc(code=str(status))


def create_inference_app(runtime: Runtime, *, start: bool = True) -> FastAPI:
    state = Inference(runtime)
    # The generating thread gives the GIL back between tokens; while a new model loads beside it, a
    # short switch interval keeps the loader from making each token wait 5 ms for the GIL.
    sys.setswitchinterval(0.0005)
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if start:
            state.start_startup_load()
        try:
            yield
        finally:
            if start:
                state.shutdown()

    app = FastAPI(title="appliance inference", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible endpoints for kiosks. `/v1/*` needs the kiosk key as "
                              "`Authorization: Bearer <key>`.")
    app.state.inference = state
    if runtime.settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=runtime.settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(KioskAuth, key=runtime.kiosk_key.encode(), metrics=state.metrics)
    app.include_router(kiosk_router(runtime.settings))


    @app.get("/healthz", summary="The process is alive")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", summary="A model is loaded and answering", responses=openapi.READY_RESPONSES)
    def readyz() -> JSONResponse:
        loaded = state.current
        if loaded is None or not loaded.thread.is_alive():
            return JSONResponse({"ready": False, "swapping": state.gap, "last_error": state.last_error},
                                status_code=503, headers={"Retry-After": "1" if state.gap else "5"})
        return JSONResponse({"ready": True, "model": loaded.info.name, "deployment_id": loaded.info.deployment_id,
                             "queue_depth": loaded.depth()})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", summary="The models being served: the site's default first, then each named "
             "deployment", responses=openapi.MODELS_RESPONSES)
    def models() -> dict[str, Any]:
        served = dict(state.served)
        ordered = ([served.pop(None)] if None in served else []) + [served[k] for k in sorted(served, key=str)]
        return {"object": "list", "data": [
            {"id": m.info.name, "object": "model", "created": int(m.info.path.stat().st_mtime), "owned_by": "appliance",
             "deployment_id": m.info.deployment_id, "artifact_id": m.info.artifact_id} for m in ordered]}

    async def _run(request: Request, body: ChatRequest | CompletionRequest, call: Any) -> Response:
        loop = asyncio.get_running_loop()
        job = Job(call=call, stream=bool(body.stream), loop=loop, chat=isinstance(body, ChatRequest),
                  usage=body.include_usage)
        try:
            loaded = state.submit(job, body.model)
        except UnknownModel as exc:
            return _error(404, f"The model '{exc}' does not exist (GET /v1/models lists the models served; "
                          "none, 'default' or 'any' means the site's default)", "invalid_request_error",
                          "model_not_found", "model")
        except Unavailable as exc:
            return _error(503, str(exc), "server_error", "unavailable", headers={"Retry-After": str(exc.retry_after)})
        name = loaded.info.name
        started = time.monotonic()
        try:
            # Streamed too: the first item comes before any byte is sent, so a refusal found while
            # preparing the prompt (too long for the context, a template error) is a plain 400.
            first = await _first(job, request)
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        if first is GONE:
            return Response(status_code=499)  # nginx's "client closed request": nobody reads it
        if isinstance(first, Exception):
            job.cancelled.set()
            return _failure(first)
        if not body.stream:
            first["model"] = name
            tokens = first.get("usage", {}).get("completion_tokens", 0)
            _count(state.metrics, tokens, time.monotonic() - started)
            return JSONResponse(first)

        async def events() -> AsyncIterator[bytes]:
            start: float | None = None
            count = 0
            item = first
            try:
                while item is not END:
                    if isinstance(item, Exception):
                        yield _sse(protocol.error_body(str(item), "server_error"))
                        break
                    if start is None:
                        start = time.monotonic()
                        state.metrics.ttft.observe(start - job.enqueued)
                    count += 1 if item.get("choices") else 0  # not the usage chunk
                    item["model"] = name
                    yield _sse(item)
                    item = await job.out.get()
                yield b"data: [DONE]\n\n"
            finally:
                job.cancelled.set()  # a disconnect stops the generation; a normal end changes nothing
                if start is not None:
                    _count(state.metrics, count, time.monotonic() - start)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _read(request: Request) -> bytes:
        """The body, refused (413) past the limit without reading the rest of it."""
        limit = runtime.settings.inference_max_request_bytes
        declared = request.headers.get("content-length", "")
        too_large = RequestError(f"the request body is larger than {limit} bytes (APPLIANCE_INFERENCE_MAX_REQUEST_"
                                 "BYTES)", None, "request_too_large", status=413)
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post("/v1/chat/completions", summary="Chat completion (OpenAI-compatible, streaming with stream=true)",
              openapi_extra=openapi.with_messages(protocol.openapi_body(ChatRequest)),
              responses=openapi.completion_responses(openapi.ChatCompletion, "chat completion"))
    async def chat(request: Request) -> Response:
        body: ChatRequest = protocol.parse(await _read(request), ChatRequest)
        messages = kiosk_messages.messages_of(body)
        call = chat_call(body, messages, body.response_format_for_llama(), kiosk_messages.text_bytes(messages))
        return await _run(request, body, call)

    @app.post("/v1/completions", summary="Text completion (OpenAI-compatible, streaming with stream=true)",
              openapi_extra=protocol.openapi_body(CompletionRequest),
              responses=openapi.completion_responses(openapi.TextCompletion, "text completion"))
    async def completions(request: Request) -> Response:
        body: CompletionRequest = protocol.parse(await _read(request), CompletionRequest)
        return await _run(request, body, completion_call(body, kiosk_messages.prompt_of(body)))

    _install_errors(app)
    generate = app.openapi

    def document() -> dict[str, Any]:
        return openapi.add_security(generate())

    app.openapi = document  # type: ignore[method-assign]
    return app


GONE = object()


async def _first(job: Job, request: Request) -> Any:
    """The job's first item (for an answer returned whole, the answer), or GONE when the client went
    away before it came: the job is then cancelled, and its sequence freed at the next decode step
    (uvicorn does not cancel a handler whose client left; a streamed answer's later chunks are
    watched by StreamingResponse)."""
    got = asyncio.ensure_future(job.out.get())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({got, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        got.cancel()
        raise
    finally:
        gone.cancel()
    if got.done():
        return got.result()
    got.cancel()
    job.cancelled.set()
    return GONE


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was read before: receive() waits for the end)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _failure(exc: BaseException) -> JSONResponse:
    if isinstance(exc, RequestError):
        return _error(exc.status, exc.message, exc.kind, exc.code, exc.param)
    if isinstance(exc, ValueError):  # llama-cpp-python's word for a request it cannot do
        return _error(400, str(exc), "invalid_request_error")
    log.error("generation failed: %r", exc)
    return _error(500, f"generation failed: {exc}", "server_error")


def _install_errors(app: FastAPI) -> None:
    """OpenAI's error shape for everything, including routes that do not exist and crashes."""

    async def request_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        return _failure(exc)

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return _error(exc.status_code, str(exc.detail), "invalid_request_error",
                      headers=dict(exc.headers) if exc.headers else None)

    async def crash(_request: Request, exc: Exception) -> Response:
        log.exception("request failed", exc_info=exc)
        return _error(500, "internal error (logged on the appliance)", "server_error")

    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, crash)


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _count(metrics: Metrics, tokens: int, seconds: float) -> None:
    metrics.tokens.inc(tokens)
    metrics.generation_seconds.inc(seconds)
    if seconds > 0 and tokens:
        metrics.tokens_per_s.set(tokens / seconds)
