"""Continuous batching: one llama.cpp context holding `parallel` sequences, decoded together.

A `BatchedModel` has the interface of `engine.LoadedModel` (the manager swaps either), but a
request does not wait for the one before it to end. Each request starts on a thread of its own: it
renders the chat template and tokenizes (llama-cpp-python's handler, through `BatchedLlama`) and
hands the batch thread a `Sequence`; a streamed answer's tokens then go from the batch thread to the
event loop (appliance/inference/streams.py), an answer returned whole is collected until it ends. The batch
thread owns the context (llama.cpp's OpenMP team belongs to the thread that calls it): every step
it admits waiting sequences to free seats, puts one token of every generating sequence and the
next prompt tokens of new ones (up to `n_batch`) in one `llama_batch`, decodes it under the compute
lock, samples each sequence with its own chain, and frees the KV cells of sequences that ended or
whose client went away (`llama_memory_seq_rm`), so a new request joins between two steps.

The KV cache holds `parallel` streams of `ctx` cells (one per seat): each request may use `ctx`
tokens, whatever the others use. A seat keeps the cells of the request it served last, and a new
request takes the free seat whose cells share the longest prefix with its prompt (the system prompt
and chat-template preamble every kiosk sends; the same question asked again) and decodes only the
rest, as llama-server's prompt cache does (appliance/inference/seats.py). LoRA adapters of this
base are decoded in groups, one per adapter, every step (appliance/inference/adapters.py).
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time
from collections import deque
from typing import Any

import llama_cpp

from appliance.inference.adapters import AdapterHosting, Loras
from appliance.inference.batched_llm import BatchedLlama
from appliance.inference.engine import END, Job, LoadSpec, ModelHost, ModelInfo, iterate, smoke_test
from appliance.inference.metrics import Metrics
from appliance.inference.seats import Seats
from appliance.inference.sequences import Sequence
from appliance.inference.steps import N_BATCH, DecodeSteps
from appliance.inference.streams import DirectStream
from appliance.serving import KioskPriority

log = logging.getLogger("appliance.inference")
OWN_CTX = 64  # tokens of the Llama's own context (it renders and tokenizes; the batch decodes)


class BatchedModel(AdapterHosting, DecodeSteps, ModelHost):
    """The model (llama-cpp-python's Llama with a minimal context of its own: it gives the
    vocabulary, tokenizer and chat template) and the batched context beside it, `parallel` seats of
    `spec.n_ctx` tokens each. Smoke-tested through the batch like any request."""

    def __init__(self, info: ModelInfo, spec: LoadSpec, queue_size: int, metrics: Metrics, compute: threading.Lock,
                 loading: threading.Event | None = None, priority: KioskPriority | None = None, *,
                 parallel: int) -> None:
        super().__init__(info, spec, metrics, compute, loading, priority)
        self.parallel, self.ctx, self.queue_size = parallel, spec.n_ctx, queue_size
        self._ctx: Any = None
        self.incoming: queue.Queue[Sequence | None] = queue.Queue()
        self.control: queue.Queue[tuple[Any, ...]] = queue.Queue()  # adapter additions and removals
        self.loras = Loras()
        self._adapters_open: set[str] = set()  # adapters requests may name (under _lock)
        self.inflight = 0  # jobs accepted and not yet answered (rendering, waiting or generating)
        self.thread.start()

    # the LoadedModel interface

    def submit(self, job: Job) -> str:
        """'ok', 'full' (parallel + queue_size requests already in) or 'retired' (this model, or the
        job's adapter, stopped accepting)."""
        with self._lock:
            if not self.accepting or (job.adapter is not None and job.adapter not in self._adapters_open):
                return "retired"
            if self.inflight >= self.parallel + self.queue_size:
                return "full"
            self._count(job.adapter, 1)
        threading.Thread(target=self._run, args=(job,), name=f"request-{self.info.key}", daemon=True).start()
        return "ok"

    def depth(self) -> int:
        return self.inflight

    def retire(self) -> None:
        """Stop accepting; requests already in end on this model; then it is closed."""
        with self._lock:
            self.accepting = False
        self.incoming.put(None)

    def enqueue(self, seq: Sequence) -> None:
        self.incoming.put(seq)

    def wake(self) -> None:
        self.incoming.put(None)

    # the request's thread

    def _run(self, job: Job) -> None:
        """Render the prompt and queue the sequence. A streamed request is then the batch thread's: its
        tokens go to the event loop (DirectStream) and it is accounted for when its sequence ends."""
        if self.priority is not None:
            self.metrics.held_back.inc(self.priority.begin())
        direct = DirectStream(job, done=lambda: self._finish(job)) if job.stream else None
        try:
            result = job.call(BatchedLlama(self, job.cancelled, adapter=job.adapter, direct=direct))
            if direct is not None and direct.opened:
                return
            if not job.stream:
                job.send(result)
                return
            for chunk in iterate(result):
                if job.cancelled.is_set():
                    break
                job.send(chunk)
            job.send(END)
        except Exception as exc:  # noqa: BLE001  (the request gets the error)
            job.send(exc)
            job.cancelled.set()  # a sequence already queued ends at the next step
        finally:
            if direct is None or not direct.opened:
                self._finish(job)

    def _finish(self, job: Job) -> None:
        if self.priority is not None:
            self.priority.end()
        with self._lock:
            self._count(job.adapter, -1)
        self.wake()

    # the batch thread

    def _main(self) -> None:
        started = time.monotonic()
        try:
            self.llm = self._open(n_ctx=OWN_CTX)
            self._ctx = self._context()
            self.load_s = time.monotonic() - started
        except BaseException as exc:  # noqa: BLE001  (reported to whoever waits in wait_ready)
            self._fail_start(exc)
            return
        threading.Thread(target=self._smoke, name=f"smoke-{self.info.key}", daemon=True).start()
        batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        try:
            self._serve(batch)
        finally:
            llama_cpp.llama_batch_free(batch)
            self.loras.close()
            self._ctx.close()
            self.llm.close()
            log.debug("%s: closed", self.info.key)

    def _context(self) -> Any:
        from llama_cpp._internals import LlamaContext

        params = type(self.llm.context_params).from_buffer_copy(self.llm.context_params)
        params.n_ctx = self.ctx * self.parallel
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_seq_max = self.parallel
        # One KV stream per sequence and flash attention, as llama-server with --parallel N: measured
        # here on the bundled model, a greedy answer decoded beside four others is then token for token
        # the answer decoded alone. With a unified cache it drifted after ~14 tokens (2 of 5 answers
        # differed with flash attention, all without it): the attention then spans all sequences' cells.
        params.kv_unified = False
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        return LlamaContext(model=self.llm._model, params=params, verbose=False)

    def _smoke(self) -> None:
        with self._lock:
            self.inflight += 1
        try:
            self.smoke_text = smoke_test(BatchedLlama(self, threading.Event()))
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            self.retire()
        finally:
            with self._lock:
                self.inflight -= 1
            self.loading.clear()
            self.ready.set()
            self.wake()

    def _serve(self, batch: Any) -> None:
        waiting: deque[Sequence] = deque()
        active: list[Sequence] = []
        seats = Seats(self._ctx.memory, self.parallel)
        buf = ctypes.create_string_buffer(256)
        while True:
            self.busy = bool(active)
            item = self.incoming.get() if not active and not waiting else None
            while True:
                if item is not None:
                    waiting.append(item)
                try:
                    item = self.incoming.get_nowait()
                except queue.Empty:
                    break
            self._adapters(seats, active, waiting)
            for seq in [s for s in active if s.cancelled.is_set()]:
                self._free(seq, active, seats, "cancelled")
            for seq in [s for s in waiting if s.cancelled.is_set()]:
                waiting.remove(seq)
                seq.send(("end", "cancelled", 0))
            while waiting and seats.free:
                seq = waiting.popleft()
                try:
                    if seq.adapter is not None and seq.adapter not in self.loras.loaded:
                        raise RuntimeError(f"the adapter {seq.adapter} is no longer served")
                    reused = seats.take(seq)
                    self.metrics.prompt_tokens_reused.inc(reused)
                    seq.start(self.llm._model, reused)
                except Exception as exc:  # noqa: BLE001  (a grammar llama.cpp refuses: that request's error)
                    if seq.seat >= 0:
                        seats.give_back(seq, keep=False)
                    seq.fail(exc)
                    continue
                active.append(seq)
            self.metrics.queue_depth.set(len(waiting))
            self.metrics.sequences.set(len(active))
            if len(active) > self.metrics.peak:
                self.metrics.peak = len(active)
                self.metrics.sequences_peak.set(len(active))
            if not active:
                with self._lock:
                    if not self.accepting and self.inflight == 0 and not waiting:
                        return
                continue
            # One decode per adapter in use (the base's own sequences are a group too), in seat order.
            for adapter in sorted({s.adapter for s in active}, key=lambda k: (k is not None, k or "")):
                group = [s for s in active if s.adapter == adapter]
                try:
                    self.loras.apply(self._ctx.ctx, adapter)
                    self._step(batch, group, active, seats, buf)
                except Exception as exc:  # noqa: BLE001  (a bug must fail these requests, not stall them all)
                    log.exception("%s: a decode step failed", self.info.key)
                    for seq in group:
                        seq.fail(exc)
                        if seq in active:
                            self._free(seq, active, seats, None)
