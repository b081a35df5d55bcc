"""How the inference server opens a model: serial (`LoadedModel`) or batched (`BatchedModel`) by
`APPLIANCE_INFERENCE_PARALLEL`, its thread count and memory estimate; and for a LoRA adapter
deployment, batched, an `AdapterView` on the one loaded copy of its base GGUF that every adapter of
that base shares (loaded when the first adapter needs it, retired when the last one is).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

from appliance.inference.adapters import AdapterView
from appliance.inference.batching import BatchedModel
from appliance.inference.engine import LoadedModel, LoadSpec, ModelInfo
from appliance.inference.metrics import Metrics
from appliance.serving import KioskPriority
from appliance.settings import Settings

MB = 1024 * 1024
Served = LoadedModel | BatchedModel | AdapterView
log = logging.getLogger("appliance.inference")


class ModelFactory:
    """`compute`: one decode at a time on this machine, across models; `loading`: set while a new
    model loads and smoke-tests beside a serving one (the serving one then uses one thread fewer)."""

    def __init__(self, settings: Settings, metrics: Metrics, priority: KioskPriority | None) -> None:
        self.settings, self.metrics, self.priority = settings, metrics, priority
        self.compute = threading.Lock()
        self.loading = threading.Event()
        self._parallel_auto: int | None = None
        self.bases: dict[str, BatchedModel] = {}  # base GGUF path -> the model its adapters share
        self.views: dict[str, set[AdapterView]] = {}
        self._lock = threading.Lock()

    def open(self, info: ModelInfo, available_mb: float) -> Served:
        """Starts loading on the model's own thread (an adapter: on its base's); `wait_ready()` on the result."""
        s = self.settings
        parallel = self.parallel(available_mb)
        spec = LoadSpec(n_ctx=s.inference_ctx, threads=self.threads, gpu_layers=s.inference_gpu_layers)
        if parallel == 1:  # the serial way: one request at a time, the others queue (an adapter: loaded with it)
            return LoadedModel(info, spec, s.inference_queue, self.metrics, self.compute, self.loading, self.priority)
        if info.lora is None:
            return BatchedModel(info, spec, s.inference_queue, self.metrics, self.compute, self.loading,
                                self.priority, parallel=parallel)
        key = str(info.path)
        with self._lock:
            base = self.bases.get(key)
            if base is None or not base.accepting:
                size = info.path.stat().st_size if info.path.is_file() else 0
                base_info = ModelInfo(key=f"adapter-base:{info.path.name}", name=info.path.name.removesuffix(".gguf"),
                                      path=info.path, size=size)
                base = BatchedModel(base_info, spec, s.inference_queue, self.metrics, self.compute, self.loading,
                                    self.priority, parallel=parallel)
                self.bases[key], self.views[key] = base, set()
            view = AdapterView(base, info, self._released)
            self.views[key].add(view)
        return view

    def _released(self, view: AdapterView) -> None:
        """An adapter was freed: its base is retired when no deployment uses it any more."""
        key = str(view.info.path)
        with self._lock:
            views = self.views.get(key, set())
            views.discard(view)
            base = self.bases.get(key)
            if base is not view.base or views:
                return
            del self.bases[key], self.views[key]
        log.info("no adapter uses %s any more: unloading it", view.info.path.name)
        base.retire()

    def base_loaded(self, info: ModelInfo) -> bool:
        base = self.bases.get(str(info.path))
        return base is not None and base.accepting and base.error is None

    def parallel(self, available_mb: float) -> int:
        """Sequences decoded together: the setting, or (0) what memory allows, between 4 and 8;
        decided once per process."""
        if self.settings.inference_parallel:
            return self.settings.inference_parallel
        if self._parallel_auto is None:
            self._parallel_auto = max(4, min(8, int(available_mb / 4 / self.kv_mb(1))))
        return self._parallel_auto

    def kv_mb(self, sequences: int) -> float:
        # KV cache and compute buffers; measured ~60 MB for a 135M model at 4096 tokens (one sequence).
        return sequences * self.settings.inference_ctx / 64

    def needed_mb(self, info: ModelInfo, available_mb: float) -> float:
        """Weights (mapped) plus every sequence's KV cache: a rough upper bound, enough to pick the
        swap strategy. An adapter whose base is loaded needs only itself."""
        if info.lora is not None and self.base_loaded(info):
            return info.size / MB * 1.1 + 8
        base = info.path.stat().st_size if info.lora is not None and info.path.is_file() else 0
        return (info.size + base) / MB * 1.1 + 32 + self.kv_mb(self.parallel(available_mb))

    @staticmethod
    def resident_mb(served: Iterable[Served]) -> float:
        """What the served models keep loaded, each file counted once (a shared base once for all
        its adapters)."""
        files: dict[str, int] = {}
        for model in served:
            files.update(model.resident())
        return sum(files.values()) / MB

    @property
    def threads(self) -> int:
        return self.settings.inference_threads or os.cpu_count() or 1
