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
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlmodel import Session
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance import __version__
from appliance.bootstrap import Runtime
from appliance.db.tables import Deployment
from appliance.inference.engine import END, Job, ModelInfo, Slot
from appliance.inference.metrics import Metrics
from appliance.jobs import deployments
from appliance.models.registry import BUNDLED_ID
from appliance.serving import ServingSignal

log = logging.getLogger("appliance.inference")
SMOKE_MESSAGES = [{"role": "user", "content": "Say hello."}]
MB = 1024 * 1024


class Unavailable(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --- request bodies -----------------------------------------------------------------------------


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def kwargs(self, ctx: int) -> dict[str, Any]:
        return {"max_tokens": min(self.max_tokens or 512, ctx), "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed, "stop": self.stop, "presence_penalty": self.presence_penalty,
                "frequency_penalty": self.frequency_penalty}


class ChatRequest(_Sampling):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: dict[str, Any] | None = None

    def response_format_for_llama(self) -> dict[str, Any] | None:
        rf = self.response_format
        if not rf or rf.get("type") == "text":
            return None
        if rf.get("type") == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema")
            return {"type": "json_object", "schema": schema} if schema else {"type": "json_object"}
        if rf.get("type") == "json_object":
            return {"type": "json_object", **({"schema": rf["schema"]} if "schema" in rf else {})}
        raise ValueError(f"response_format.type {rf.get('type')!r} is not supported (text, json_object, json_schema)")


class CompletionRequest(_Sampling):
    prompt: str | list[str]


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
        # Kiosks first: worker children wait between their steps while this is held (appliance/serving.py).
        self.serving = ServingSignal(runtime.paths.serving_lock) if runtime.settings.serving_priority else None

    # loading

    def load(self, info: ModelInfo) -> Any:
        from llama_cpp import Llama

        check_gguf(info.path)
        return Llama(model_path=str(info.path), n_ctx=self.settings.inference_ctx,
                     n_threads=self.threads, n_threads_batch=self.threads,
                     n_gpu_layers=self.settings.inference_gpu_layers, verbose=False)

    @staticmethod
    def smoke(llm: Any) -> str:
        # Short on purpose: it runs between two requests of the model being replaced.
        out = llm.create_chat_completion(messages=SMOKE_MESSAGES, max_tokens=4, temperature=0.0, seed=0)
        if out["usage"]["completion_tokens"] < 1:
            raise RuntimeError("the smoke test produced no token")
        return str(out["choices"][0]["message"]["content"] or "")

    def _new_slot(self, info: ModelInfo) -> Slot:
        return Slot(info, lambda: self.load(info), self.smoke, self.settings.inference_queue, self.metrics,
                    self.compute, self.loading, self.threads, self.serving)

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


def check_gguf(path: Path) -> None:
    """Refuse a file llama.cpp could crash on: not GGUF, a header that does not parse, or tensors
    past the end of the file. A minimal header walk (gguf.GGUFReader takes seconds on a 49k-token
    vocabulary, and would slow the model serving beside it during a swap)."""
    import mmap
    import struct

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing")
    size = path.stat().st_size
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path.name} is not a GGUF file")
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        pos = 4
        scalar = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

        def take(fmt: str) -> Any:
            nonlocal pos
            value = struct.unpack_from("<" + fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return value[0]

        def skip_value(vtype: int) -> Any:
            nonlocal pos
            if vtype == 8:  # string
                n = take("Q")
                text = buf[pos:pos + n]
                pos += n
                return bytes(text)
            if vtype == 9:  # array
                item, count = take("I"), take("Q")
                if item in scalar:
                    pos += scalar[item] * count
                elif item == 8:  # vocabularies: ~10^5 strings, so the tightest loop
                    from_bytes = int.from_bytes
                    for _ in range(count):
                        pos += 8 + from_bytes(buf[pos:pos + 8], "little")
                    if pos > size:
                        raise ValueError("string array past the end of the file")
                else:
                    for _ in range(count):
                        skip_value(item)
                return None
            if vtype not in scalar:
                raise ValueError(f"unknown value type {vtype}")
            value = buf[pos:pos + scalar[vtype]]
            pos += scalar[vtype]
            return bytes(value)

        take("I")  # version
        n_tensors, n_kv = take("Q"), take("Q")
        alignment = 32
        for _ in range(n_kv):
            key = skip_value(8)
            value = skip_value(take("I"))
            if key == b"general.alignment" and value is not None:
                alignment = int.from_bytes(value, "little")
        tensors = []
        for _ in range(n_tensors):
            name = skip_value(8)
            dims = [take("Q") for _ in range(take("I"))]
            ttype, offset = take("I"), take("Q")
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
            n = 1
            for d in dims:
                n *= d
            tensors.append((name, offset, n // block * type_size))
        data_start = (pos + alignment - 1) // alignment * alignment
    except (struct.error, ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"{path.name} is corrupt or truncated (header: {exc})") from exc
    finally:
        buf.close()
    for name, offset, nbytes in tensors:
        if data_start + offset + nbytes > size:
            raise ValueError(f"{path.name} is corrupt or truncated (tensor {name.decode(errors='replace')} "
                             f"ends past the end of the file)")


# --- the app -------------------------------------------------------------------------------------


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


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
                await _error(401, "missing or wrong kiosk key", "invalid_api_key")(scope, receive, send)
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

    async def _run(body: _Sampling, call: Any) -> Response:
        loop = asyncio.get_running_loop()
        job = Job(call=call, stream=body.stream, loop=loop)
        try:
            slot = state.submit(job)
        except Unavailable as exc:
            return _error(503, str(exc), "unavailable", {"Retry-After": str(exc.retry_after)})
        name = slot.info.name
        if not body.stream:
            started = time.monotonic()
            try:
                result = await job.out.get()
            except asyncio.CancelledError:
                job.cancelled.set()
                raise
            if isinstance(result, Exception):
                return _error(400 if isinstance(result, ValueError) else 500, str(result), "generation_error")
            result["model"] = name
            tokens = result.get("usage", {}).get("completion_tokens", 0)
            _count(state.metrics, tokens, time.monotonic() - started)
            return JSONResponse(result)

        async def events() -> AsyncIterator[bytes]:
            first: float | None = None
            count = 0
            try:
                while True:
                    item = await job.out.get()
                    if item is END:
                        break
                    if isinstance(item, Exception):
                        yield _sse({"error": {"message": str(item), "type": "generation_error"}})
                        break
                    if first is None:
                        first = time.monotonic()
                        state.metrics.ttft.observe(first - job.enqueued)
                    count += 1
                    item["model"] = name
                    yield _sse(item)
                yield b"data: [DONE]\n\n"
            finally:
                job.cancelled.set()  # a disconnect stops the generation; a normal end changes nothing
                if first is not None:
                    _count(state.metrics, count, time.monotonic() - first)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions", summary="Chat completion (OpenAI-compatible, streaming with stream=true)")
    async def chat(request: Request) -> Response:
        try:
            body = ChatRequest.model_validate(await request.json())
            response_format = body.response_format_for_llama()
        except (ValidationError, ValueError) as exc:
            return _error(400, _message(exc), "invalid_request_error")
        kwargs = body.kwargs(runtime.settings.inference_ctx)
        if body.max_completion_tokens:
            kwargs["max_tokens"] = body.max_completion_tokens

        def call(llm: Any) -> Any:
            return llm.create_chat_completion(messages=body.messages, stream=body.stream,
                                              response_format=response_format, **kwargs)

        return await _run(body, call)

    @app.post("/v1/completions", summary="Text completion (OpenAI-compatible, streaming with stream=true)")
    async def completions(request: Request) -> Response:
        try:
            body = CompletionRequest.model_validate(await request.json())
        except (ValidationError, ValueError) as exc:
            return _error(400, _message(exc), "invalid_request_error")
        if isinstance(body.prompt, list) and len(body.prompt) != 1:
            return _error(400, "one prompt per request", "invalid_request_error")
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        kwargs = body.kwargs(runtime.settings.inference_ctx)

        def call(llm: Any) -> Any:
            return llm.create_completion(prompt=prompt, stream=body.stream, **kwargs)

        return await _run(body, call)

    return app


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return str(exc)


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _count(metrics: Metrics, tokens: int, seconds: float) -> None:
    metrics.tokens.inc(tokens)
    metrics.generation_seconds.inc(seconds)
    if seconds > 0 and tokens:
        metrics.tokens_per_s.set(tokens / seconds)
