"""Several fine-tunes served from one loaded base: GGUF LoRA adapters on a batched model.

Each adapter deployment is loaded once on the base's llama_model (`llama_adapter_lora_init`) and
named by its deployment's key; a request carries the key (`Job.adapter`). Every decode step the
batch thread decodes the sequences of each adapter together, setting that adapter on the context
first (`llama_set_adapters_lora`; none for the base's own sequences), as llama-server batches only
slots with equal LoRA sets together. Measured in bench/inference.py (`--adapters`).

An adapter is added or removed while the base serves: added by the batch thread between two steps,
then smoke-tested through itself before kiosks are sent to it; removed once the requests decoded
with it have ended (its KV cells dropped, then `llama_adapter_lora_free`). The base is never
reloaded and no request in flight fails.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_cpp

from appliance.inference.engine import Job, ModelInfo, smoke_test

if TYPE_CHECKING:
    from appliance.inference.batching import BatchedModel
    from appliance.inference.seats import Seats
    from appliance.inference.sequences import Sequence

log = logging.getLogger("appliance.inference")


class Loras:
    """The adapters loaded on one model. Batch thread only, except `inflight` (under the model's lock)."""

    def __init__(self) -> None:
        self.loaded: dict[str, Any] = {}  # key -> llama_adapter_lora_p
        self.dropping: dict[str, threading.Event] = {}  # key -> set once freed
        self.inflight: Counter[str] = Counter()  # requests submitted per adapter and not yet answered
        self.current: str | None = None  # what is set on the context now

    def add(self, model: Any, key: str, path: Path) -> None:
        """Load the GGUF adapter at `path` on `model` (llama-cpp-python's LlamaModel). Raises
        ValueError when llama.cpp refuses it (not an adapter, or made for another base)."""
        from appliance.export.gguf_check import check_gguf

        check_gguf(path)
        handle = llama_cpp.llama_adapter_lora_init(model.model, str(path).encode())
        if not handle:
            raise ValueError(f"llama.cpp could not load the adapter {path.name} on this base model (an adapter "
                             "of another base, or not a LoRA adapter)")
        self.loaded[key] = handle

    def apply(self, ctx: Any, key: str | None) -> None:
        """Set adapter `key` (None: none) on the llama_context for the next decode."""
        if key == self.current:
            return
        if key is None:
            rc = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.loaded[key])
            scales = (ctypes.c_float * 1)(1.0)
            rc = llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, scales)
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora failed ({rc})")
        self.current = key

    def collect(self, ctx: Any, busy: set[str | None], forget: Any) -> None:
        """Free the adapters being dropped that no request uses any more (`busy`: the adapters of
        sequences seated or waiting; `forget(key)` drops their cached KV cells)."""
        for key, freed in list(self.dropping.items()):
            if key in busy or self.inflight[key] > 0:
                continue
            if self.current == key:
                self.apply(ctx, None)
            forget(key)
            llama_cpp.llama_adapter_lora_free(self.loaded.pop(key))
            del self.dropping[key]
            freed.set()
            log.debug("adapter %s: freed", key)

    def close(self) -> None:
        for handle in self.loaded.values():
            llama_cpp.llama_adapter_lora_free(handle)
        self.loaded.clear()
        for freed in self.dropping.values():
            freed.set()


class AdapterHosting:
    """Adapters on a BatchedModel (its base class): additions and removals are asked for from any
    thread and carried out by the batch thread between two decode steps (`_adapters`)."""

    control: queue.Queue[tuple[Any, ...]]
    loras: Loras
    _adapters_open: set[str]
    _lock: threading.Lock
    inflight: int
    thread: threading.Thread
    info: ModelInfo
    llm: Any
    _ctx: Any

    def wake(self) -> None:
        raise NotImplementedError

    def add_adapter(self, key: str, path: Path) -> float:
        """Load the GGUF LoRA adapter at `path` as `key` between two decode steps; returns the
        seconds it took. Raises what llama.cpp's refusal becomes (ValueError), or RuntimeError when
        this model is closed."""
        done: queue.Queue[BaseException | float] = queue.Queue()
        self.control.put(("add", key, path, done))
        self.wake()
        while True:
            try:
                outcome = done.get(timeout=0.5)
                break
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError(f"{self.info.name} is closed") from None
        if isinstance(outcome, BaseException):
            raise outcome
        with self._lock:
            self._adapters_open.add(key)
        return outcome

    def drop_adapter(self, key: str, freed: threading.Event) -> None:
        """New requests for `key` are refused from now; it is freed (`freed` set) once the requests
        decoded with it have ended."""
        with self._lock:
            self._adapters_open.discard(key)
        self.control.put(("drop", key, freed))
        self.wake()

    @contextmanager
    def counting(self, adapter: str | None) -> Iterator[None]:
        """A request made outside `submit` (an adapter's smoke test) counted as in flight."""
        with self._lock:
            self._count(adapter, 1)
        try:
            yield
        finally:
            with self._lock:
                self._count(adapter, -1)
            self.wake()

    def _count(self, adapter: str | None, n: int) -> None:
        self.inflight += n
        if adapter is not None:
            self.loras.inflight[adapter] += n

    def _adapters(self, seats: Seats, active: list[Sequence], waiting: deque[Sequence]) -> None:
        """Adapter additions and removals asked for since the last step (add_adapter, drop_adapter)."""
        while True:
            try:
                op, key, *args = self.control.get_nowait()
            except queue.Empty:
                break
            if op == "add":
                path, done = args
                started = time.monotonic()
                try:
                    self.loras.add(self.llm._model, key, path)
                except Exception as exc:  # noqa: BLE001  (the deployment's error)
                    done.put(exc)
                else:
                    done.put(time.monotonic() - started)
            else:
                self.loras.dropping[key] = args[0]
        if self.loras.dropping:
            busy = {s.adapter for s in active} | {s.adapter for s in waiting}
            with self._lock:
                self.loras.collect(self._ctx.ctx, busy, seats.forget)


class AdapterView:
    """A deployment served as a LoRA adapter on a shared `BatchedModel`: what the manager holds for
    its channel (the interface of engine.ModelHost: wait_ready, submit, retire, ...). `release(view)`
    is called once the adapter is freed (the factory then retires a base no deployment uses)."""

    def __init__(self, base: BatchedModel, info: ModelInfo, release: Any) -> None:
        assert info.lora is not None
        self.base, self.info, self._release = base, info, release
        self.key = info.key
        self.ready = threading.Event()
        self.freed = threading.Event()
        self.error: BaseException | None = None
        self.smoke_text = ""
        self.load_s = 0.0
        self.accepting = True
        threading.Thread(target=self._start, name=f"adapter-{info.key}", daemon=True).start()

    @property
    def llm(self) -> Any:
        return self.base.llm

    @property
    def thread(self) -> threading.Thread:
        return self.base.thread

    def _start(self) -> None:
        from appliance.inference.batched_llm import BatchedLlama

        try:
            self.base.wait_ready()
            self.load_s = self.base.add_adapter(self.key, self.info.lora)  # type: ignore[arg-type]
            with self.base.counting(self.key):
                self.smoke_text = smoke_test(BatchedLlama(self.base, threading.Event(), adapter=self.key))
        except BaseException as exc:  # noqa: BLE001  (reported to whoever waits in wait_ready)
            self.error = exc
            self.accepting = False
            if self.base.ready.is_set() and self.base.error is None:
                self.base.drop_adapter(self.key, self.freed)
            else:
                self.freed.set()
            threading.Thread(target=self._released, daemon=True).start()
        finally:
            self.ready.set()

    def wait_ready(self) -> None:
        self.ready.wait()
        if self.error is not None:
            raise self.error

    def submit(self, job: Job) -> str:
        if not self.accepting:
            return "retired"
        job.adapter = self.key
        return self.base.submit(job)

    def depth(self) -> int:
        return self.base.depth()

    def resident(self) -> dict[str, int]:
        return {**self.base.resident(), f"{self.info.lora}@{self.key}": self.info.size}

    def retire(self) -> None:
        """Stop accepting; requests already in end with the adapter; then it is freed."""
        if not self.accepting:
            return
        self.accepting = False
        self.base.drop_adapter(self.key, self.freed)
        threading.Thread(target=self._released, daemon=True).start()

    def _released(self) -> None:
        self.freed.wait()
        self._release(self)

    def make_room(self, timeout: float = 2.0) -> None:
        self.base.make_room(timeout)

    def join(self, timeout: float | None = None) -> None:
        self.freed.wait(timeout)
