"""The kiosk-facing inference server (port 8080): OpenAI-compatible chat and text completions on an
embedded llama-cpp-python model, with zero-downtime hot swap driven by the deployments table.

Only kiosk routes live here (`/v1/*` with the kiosk key; `/healthz`, `/readyz`, `/metrics` open):
no admin route is reachable on this port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from sqlmodel import Session
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance import __version__
from appliance.bootstrap import Runtime
from appliance.db.tables import Deployment
from appliance.inference import messages as kiosk_messages
from appliance.inference import protocol
from appliance.inference.calls import chat_call, completion_call
from appliance.inference.engine import END, Job, ModelInfo, Slot
from appliance.inference.gguf_check import check_gguf
from appliance.inference.metrics import Metrics
from appliance.inference.protocol import ChatRequest, CompletionRequest, RequestError
from appliance.jobs import deployments
from appliance.models.registry import BUNDLED_ID
from appliance.serving import KioskPriority

log = logging.getLogger("appliance.inference")
SMOKE_MESSAGES = [{"role": "user", "content": "Say hello."}]
MB = 1024 * 1024


class Unavailable(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --- the server state ----------------------------------------------------------------------------


class Inference:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.settings = runtime.settings
        self.metrics = Metrics()
        self.slot: Slot | None = None
        self.gap = False
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.compute = threading.Lock()  # one generation at a time on this machine
        self.loading = threading.Event()  # a new model is loading and smoke-testing beside the serving one
        # Kiosks first (appliance/serving.py): worker children wait while a request generates.
        s, paths = runtime.settings, runtime.paths
        self.priority = (KioskPriority(paths.serving_lock, paths.background_lock, min_share=s.training_min_share)
                         if s.serving_priority else None)

    # loading

    def load(self, info: ModelInfo) -> Any:
        from appliance.inference.llm import ServedLlama

        longest_token = check_gguf(info.path)
        return ServedLlama(model_path=str(info.path), n_ctx=self.settings.inference_ctx,
                           n_threads=self.threads, n_threads_batch=self.threads,
                           n_gpu_layers=self.settings.inference_gpu_layers, verbose=False,
                           max_token_bytes=longest_token or 1024)

    @staticmethod
    def smoke(llm: Any) -> str:
        # Short on purpose: it runs between two requests of the model being replaced.
        out = llm.create_chat_completion(messages=SMOKE_MESSAGES, max_tokens=4, temperature=0.0, seed=0)
        if out["usage"]["completion_tokens"] < 1:
            raise RuntimeError("the smoke test produced no token")
        return str(out["choices"][0]["message"]["content"] or "")

    def _new_slot(self, info: ModelInfo) -> Slot:
        return Slot(info, lambda: self.load(info), self.smoke, self.settings.inference_queue, self.metrics,
                    self.compute, self.loading, self.threads, self.priority)

    @property
    def threads(self) -> int:
        return self.settings.inference_threads or os.cpu_count() or 1

    def _activate(self, slot: Slot | None) -> None:
        with self.lock:
            self.slot, self.gap = slot, False
        if slot is not None:
            self.metrics.active.replace(1, model=slot.info.name, deployment=slot.info.deployment_id or "",
                                        artifact=slot.info.artifact_id or "")

    def available_mb(self) -> float:
        if self.settings.inference_memory_mb:
            used = self.slot.info.size / MB if self.slot else 0
            return self.settings.inference_memory_mb - used
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
        return float("inf")

    def needed_mb(self, info: ModelInfo) -> float:
        # Weights (mapped) plus the KV cache and compute buffers; measured ~60 MB for a 135M model at
        # 4096 tokens. A rough upper bound is enough to pick the strategy.
        return info.size / MB * 1.1 + 32 + self.settings.inference_ctx / 64

    # reconciling

    def info_for(self, dep: Deployment | None) -> ModelInfo | None:
        with Session(self.rt.engine) as session:
            if dep is None:
                try:
                    path, name = deployments.model_file(session, self.rt.paths, artifact_id=None,
                                                        base_model_id=BUNDLED_ID)
                except Exception:  # noqa: BLE001  (no bundled model: nothing to serve until a deployment)
                    return None
                return ModelInfo(key=f"base:{BUNDLED_ID}", name=name, path=path, size=_size(path))
            path, name = deployments.model_file(session, self.rt.paths, artifact_id=dep.artifact_id,
                                                base_model_id=dep.base_model_id)
            return ModelInfo(key=dep.id, name=dep.name or name, path=path, size=_size(path), deployment_id=dep.id,
                             artifact_id=dep.artifact_id)

    def reconcile_once(self) -> str | None:
        with Session(self.rt.engine) as session:
            dep = deployments.target(session)
        want = dep.id if dep is not None else f"base:{BUNDLED_ID}"
        if self.slot is not None and self.slot.info.key == want:
            return None
        try:
            info = self.info_for(dep)
        except Exception as exc:  # noqa: BLE001
            if dep is not None:
                deployments.mark_failed(engine=self.rt.engine, deployment_id=dep.id, error=f"cannot deploy: {exc}")
            return f"failed {want}: {exc}"
        if info is None:
            return None
        return self.swap(info)

    def swap(self, info: ModelInfo) -> str:
        old = self.slot
        overlap = old is None or self.needed_mb(info) <= self.available_mb()
        strategy = "overlap" if overlap else "drain"
        gap_ms = 0.0
        if not overlap:
            assert old is not None
            with self.lock:
                self.slot, self.gap = None, True  # new requests: 503 + Retry-After
            gap_start = time.monotonic()
            old.retire()
            old.join()
        marker = self.loading_marker
        marker.write_text(info.deployment_id or "")
        if old is not None and overlap:
            self.loading.set()  # cleared by the new slot once it has passed its smoke test
            old.make_room()
        slot = self._new_slot(info)
        try:
            slot.wait_ready()
        except Exception as exc:  # noqa: BLE001  (a bad model must never take serving down)
            self.loading.clear()
            reason = f"{info.name} failed to {'load' if slot.llm is None else 'answer the smoke test'}: {exc}"
            self.metrics.swaps.inc(strategy=strategy, result="failed")
            self.last_error = reason
            if not overlap and old is not None:  # drained: bring the old model back
                back = self._new_slot(old.info)
                back.wait_ready()
                self._activate(back)
            if info.deployment_id:
                deployments.mark_failed(engine=self.rt.engine, deployment_id=info.deployment_id, error=reason)
            log.warning(reason)
            marker.unlink(missing_ok=True)
            return f"failed {info.key}: {reason}"
        marker.unlink(missing_ok=True)
        load_ms = slot.load_s * 1000
        if not overlap:
            gap_ms = (time.monotonic() - gap_start) * 1000
        self._activate(slot)  # atomic: from here on new requests go to the new model
        if overlap and old is not None:
            old.retire()  # in-flight requests finish on the old model, then it is closed
        self.metrics.swaps.inc(strategy=strategy, result="ok")
        self.metrics.swap_gap.set(gap_ms / 1000)
        if info.deployment_id:
            deployments.mark_active(engine=self.rt.engine, deployment_id=info.deployment_id, strategy=strategy,
                                    gap_ms=gap_ms, load_ms=load_ms, smoke_text=slot.smoke_text)
        log.info("serving %s (%s, load %.0f ms, gap %.0f ms)", info.name, strategy, load_ms, gap_ms)
        return f"serving {info.key} ({strategy})"

    @property
    def loading_marker(self) -> Path:
        """Names the deployment being loaded. Left behind only if the process died while loading
        (llama.cpp can abort on a malformed file): the next start refuses that deployment instead of
        loading it again and again under the supervisor's restarts."""
        return self.rt.paths.root / "inference-loading"

    def start_startup_load(self) -> None:
        """Load the target deployment (or the bundled model) in the background; a deployment whose
        load killed the previous process is marked failed first."""
        marker = self.loading_marker
        if marker.exists():
            dep_id = marker.read_text().strip()
            if dep_id:
                deployments.mark_failed(engine=self.rt.engine, deployment_id=dep_id,
                                        error="the inference server died while loading this model; it was not served")
                log.warning("deployment %s was being loaded when the server died; marked failed", dep_id)
            marker.unlink()
        self.thread = threading.Thread(target=self._reconcile_loop, name="reconciler", daemon=True)
        self.thread.start()

    def _reconcile_loop(self) -> None:
        while not self.stop.is_set():
            try:
                result = self.reconcile_once()
                if result:
                    log.info(result)
            except Exception:  # noqa: BLE001
                log.exception("reconcile failed")
            self.stop.wait(self.settings.inference_reconcile_s)

    def shutdown(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(5)
        if self.slot is not None:
            self.slot.retire()
            self.slot.join(10)

    # serving

    def submit(self, job: Job) -> Slot:
        for _ in range(3):
            slot = self.slot
            if slot is None:
                if self.gap:
                    raise Unavailable("the model is being swapped; retry shortly", 1)
                raise Unavailable("no model is loaded yet", 5)
            outcome = slot.submit(job)
            if outcome == "ok":
                return slot
            if outcome == "full":
                raise Unavailable(f"the request queue is full ({self.settings.inference_queue} waiting)", 1)
        raise Unavailable("the model is being swapped; retry shortly", 1)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


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
    app = FastAPI(title="appliance inference", version=__version__,
                  description="OpenAI-compatible endpoints for kiosks. `/v1/*` needs the kiosk key as "
                              "`Authorization: Bearer <key>`.")
    app.state.inference = state
    if runtime.settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=runtime.settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(KioskAuth, key=runtime.kiosk_key.encode(), metrics=state.metrics)

    if start:
        @app.on_event("startup")
        def _start() -> None:
            state.start_startup_load()

        @app.on_event("shutdown")
        def _stop() -> None:
            state.shutdown()

    @app.get("/healthz", summary="The process is alive")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", summary="A model is loaded and answering")
    def readyz() -> JSONResponse:
        slot = state.slot
        if slot is None or not slot.thread.is_alive():
            return JSONResponse({"ready": False, "swapping": state.gap, "last_error": state.last_error},
                                status_code=503, headers={"Retry-After": "1" if state.gap else "5"})
        return JSONResponse({"ready": True, "model": slot.info.name, "deployment_id": slot.info.deployment_id,
                             "queue_depth": slot.depth()})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", summary="The model being served")
    def models() -> dict[str, Any]:
        slot = state.slot
        data = []
        if slot is not None:
            data.append({"id": slot.info.name, "object": "model", "created": int(slot.info.path.stat().st_mtime),
                         "owned_by": "appliance", "deployment_id": slot.info.deployment_id,
                         "artifact_id": slot.info.artifact_id})
        return {"object": "list", "data": data}

    async def _run(body: ChatRequest | CompletionRequest, call: Any) -> Response:
        loop = asyncio.get_running_loop()
        job = Job(call=call, stream=bool(body.stream), loop=loop)
        try:
            slot = state.submit(job)
        except Unavailable as exc:
            return _error(503, str(exc), "server_error", "unavailable", headers={"Retry-After": str(exc.retry_after)})
        name = slot.info.name
        started = time.monotonic()
        try:
            # Streamed too: the first item comes before any byte is sent, so a refusal found while
            # preparing the prompt (too long for the context, a template error) is a plain 400.
            first = await job.out.get()
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
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
              openapi_extra=protocol.openapi_body(ChatRequest))
    async def chat(request: Request) -> Response:
        body: ChatRequest = protocol.parse(await _read(request), ChatRequest)
        messages = kiosk_messages.messages_of(body)
        call = chat_call(body, messages, body.response_format_for_llama(), kiosk_messages.text_bytes(messages))
        return await _run(body, call)

    @app.post("/v1/completions", summary="Text completion (OpenAI-compatible, streaming with stream=true)",
              openapi_extra=protocol.openapi_body(CompletionRequest))
    async def completions(request: Request) -> Response:
        body: CompletionRequest = protocol.parse(await _read(request), CompletionRequest)
        return await _run(body, completion_call(body, kiosk_messages.prompt_of(body)))

    _install_errors(app)
    return app


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
