"""Loaded models and the one thread each that may touch them (`ModelHost`): the serial way to serve
(`LoadedModel`, `APPLIANCE_INFERENCE_PARALLEL=1`, the appliance's serving before continuous
batching) here; the batched way is appliance/inference/batching.py, with the same interface. The
engine loads the model (`open_served`) and smoke-tests it (`smoke_test`) itself.

Swapping models is switching which model new requests go to. A retired one stops accepting, its
thread finishes what was already queued (in-flight requests end on the old model), then closes it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.inference.metrics import Metrics
from appliance.serving import KioskPriority

END = object()
SMOKE_MESSAGES = [{"role": "user", "content": "Say hello."}]
log = logging.getLogger("appliance.inference")


@dataclass
class ModelInfo:
    key: str  # deployment id, or "base:<model id>" when no deployment exists
    name: str  # what /v1/models shows
    path: Path  # the GGUF loaded (for an adapter deployment: its base)
    size: int  # bytes this deployment adds when its base is already loaded (the adapter's, or the GGUF's)
    deployment_id: str | None = None
    artifact_id: str | None = None
    lora: Path | None = None  # a GGUF LoRA adapter served on `path`


@dataclass(frozen=True)
class LoadSpec:
    """How a model is opened (appliance/inference/llm.py open_served): context tokens, threads, GPU layers,
    chat template."""

    n_ctx: int
    threads: int
    gpu_layers: int = 0
    chat_template: str | None = None  # Jinja text replacing the GGUF's (an evaluation's override)


@dataclass
class Job:
    """One request: `call(llm)` returns a result or, when streaming, an iterator of chunks.
    `adapter`: the LoRA adapter (its deployment's key) the request is decoded with, on a model
    serving several (appliance/inference/adapters.py)."""

    call: Callable[[Any], Any]
    stream: bool
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)
    adapter: str | None = None
    chat: bool = False  # a chat completion (else a text completion): the chunks' shape, when streamed
    usage: bool = False  # streamed with stream_options.include_usage: a usage chunk ends the stream

    def send(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


def smoke_test(llm: Any) -> str:
    """A 4-token greedy answer to a fixed question through the chat template: what a model must
    answer before kiosks are sent to it. Short on purpose: it runs beside the model being replaced.
    Raises RuntimeError when no token comes (and whatever llama.cpp raises)."""
    out = llm.create_chat_completion(messages=SMOKE_MESSAGES, max_tokens=4, temperature=0.0, seed=0)
    if out["usage"]["completion_tokens"] < 1:
        raise RuntimeError("the smoke test produced no token")
    return str(out["choices"][0]["message"]["content"] or "")


class ModelHost:
    """What the serial (`LoadedModel`) and batched (`BatchedModel`) ways of serving share: the model
    is loaded, smoke-tested, used and closed by its own thread (`_main`, per subclass): llama.cpp's
    OpenMP thread team belongs to the thread that calls it, and a model touched from two threads
    (loaded and smoke-tested in one, generating in another) was measured generating at half speed
    here, two teams fighting over the cores.

    During a swap the new model loads and answers its smoke test beside the serving one, the cores
    split between them: the serving model generates with one thread fewer, the new one smoke-tests
    with one. Measured here (2 cores, bench/inference.py and a probe of the same pattern): running
    the smoke test between two requests under the compute lock instead made the request behind it
    wait for the whole cold first evaluation (p99 3x the steady one); split cores keep the requests
    that overlap a swap within 2x. Requests themselves share one compute lock across models: after
    the switch the new model's first request waits for the old one's in-flight requests to end."""

    def __init__(self, info: ModelInfo, spec: LoadSpec, metrics: Metrics, compute: threading.Lock,
                 loading: threading.Event | None = None, priority: KioskPriority | None = None) -> None:
        self.info, self.spec, self.metrics, self.compute = info, spec, metrics, compute
        # Kiosks first (appliance/serving.py): held while a request generates, and the gaps that keep
        # background work's minimum share under continuous traffic.
        self.priority = priority
        # Set while another model loads and smoke-tests beside this one: generate with one thread
        # fewer, leaving the newcomer a core instead of three threads fighting over two.
        self.loading = loading or threading.Event()
        self.threads = self._threads_now = spec.threads
        self.llm: Any = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.smoke_text = ""
        self.load_s = 0.0
        self._lock = threading.Lock()
        self.accepting = True
        self.busy = False
        self.thread = threading.Thread(target=self._main, name=f"model-{info.key}", daemon=True)

    def _open(self, n_ctx: int | None = None, lora: Path | None = None) -> Any:
        from appliance.inference.llm import open_served

        return open_served(self.info.path, n_ctx=n_ctx or self.spec.n_ctx, threads=self.threads,
                           gpu_layers=self.spec.gpu_layers, lora_path=lora, chat_template=self.spec.chat_template)

    def _main(self) -> None:
        raise NotImplementedError

    def wait_ready(self) -> None:
        """Block until the model is loaded and passed its smoke test; raise why it did not."""
        self.ready.wait()
        if self.error is not None:
            raise self.error

    def resident(self) -> dict[str, int]:
        """{file: bytes} of what this keeps loaded (memory accounting across models)."""
        return {str(self.info.path): self.info.size}

    def make_room(self, timeout: float = 2.0) -> None:
        """Once `loading` is set: wait (bounded) until this model generates with one thread fewer or
        is idle. A request already running when a load starts keeps all its threads (a non-streamed
        one cannot change them midway), and loading beside it oversubscribes the cores: measured
        here, 16-token requests at 2-3x their time instead of ~1.7x."""
        deadline = time.monotonic() + timeout
        while (self.threads > 1 and self.busy and self._threads_now >= self.threads
               and time.monotonic() < deadline and self.thread.is_alive()):
            time.sleep(0.005)

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def _fail_start(self, exc: BaseException) -> None:
        self.error = exc
        self.accepting = False
        if self.llm is not None:
            self.llm.close()
        self.ready.set()


class LoadedModel(ModelHost):
    """The serial way: a bounded queue and the model's thread running one generation at a time.
    Request handlers only enqueue (a full queue is an immediate refusal, never a hang) and read
    results from an asyncio queue the thread feeds. An adapter deployment (`info.lora`) loads its
    base with the adapter applied (llama.cpp's lora_path): nothing is shared in this mode."""

    def __init__(self, info: ModelInfo, spec: LoadSpec, queue_size: int, metrics: Metrics, compute: threading.Lock,
                 loading: threading.Event | None = None, priority: KioskPriority | None = None) -> None:
        super().__init__(info, spec, metrics, compute, loading, priority)
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.thread.start()

    def resident(self) -> dict[str, int]:
        out = {str(self.info.path): _size(self.info.path)}
        if self.info.lora is not None:
            out[f"{self.info.lora}@{self.info.key}"] = self.info.size
        return out

    def submit(self, job: Job) -> str:
        """'ok', 'full' (queue full) or 'retired' (this model stopped accepting; use the new one)."""
        with self._lock:
            if not self.accepting:
                return "retired"
            try:
                self.jobs.put_nowait(job)
            except queue.Full:
                return "full"
        self.metrics.queue_depth.set(self.jobs.qsize())
        return "ok"

    def depth(self) -> int:
        return self.jobs.qsize() + (1 if self.busy else 0)

    def retire(self) -> None:
        """Stop accepting; queued jobs still run; then the model is closed."""
        with self._lock:
            self.accepting = False
        self.jobs.put(None)  # blocks only while the queue is full, i.e. until a job starts

    def _main(self) -> None:
        started = time.monotonic()
        try:
            self.llm = self._open(lora=self.info.lora)
            self.load_s = time.monotonic() - started
            if self.loading.is_set() and self.threads > 1:  # another model serves: smoke-test on one core
                self._set_threads(1)
            self.smoke_text = smoke_test(self.llm)
            self.loading.clear()
            self._set_threads(self.threads)
            log.debug("%s: loaded in %.0f ms, smoke test passed %.0f ms later", self.info.key,
                      self.load_s * 1000, (time.monotonic() - started - self.load_s) * 1000)
        except BaseException as exc:  # noqa: BLE001  (reported to whoever waits in wait_ready)
            self._fail_start(exc)
            return
        self.ready.set()
        while True:
            job = self.jobs.get()
            self.metrics.queue_depth.set(self.jobs.qsize())
            if job is None:
                break
            if job.cancelled.is_set():
                continue
            self.busy = True
            if self.priority is not None:
                self.metrics.held_back.inc(self.priority.begin())
            try:
                with self.compute:
                    self._run(job)
            finally:
                self.busy = False
                if self.priority is not None:
                    self.priority.end()
        self.llm.close()
        log.debug("%s: closed", self.info.key)

    def _set_threads(self, wanted: int) -> None:
        if wanted != self._threads_now and self.threads > 0:
            self.llm._ctx.set_n_threads(wanted, wanted)
            self._threads_now = wanted

    def _fit_threads(self) -> None:
        if self.threads > 1:
            self._set_threads(self.threads - 1 if self.loading.is_set() else self.threads)

    def _run(self, job: Job) -> None:
        try:
            self._fit_threads()
            result = job.call(self.llm)
            if not job.stream:
                job.send(result)
                return
            for chunk in iterate(result):
                if job.cancelled.is_set():  # the client went away: stop generating for it
                    break
                self._fit_threads()  # between two tokens: safe in this thread
                job.send(chunk)
            job.send(END)
        except Exception as exc:  # noqa: BLE001  (the request gets the error; the thread lives on)
            job.send(exc)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def iterate(result: Any) -> Iterator[Any]:
    try:
        yield from result
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
