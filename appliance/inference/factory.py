"""How the inference server opens a model: serial (`LoadedModel`) or batched (`BatchedModel`) by
`APPLIANCE_INFERENCE_PARALLEL`, with its smoke test, thread count and memory estimate.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from appliance.inference.batching import BatchedModel
from appliance.inference.engine import LoadedModel, ModelInfo
from appliance.inference.metrics import Metrics
from appliance.serving import KioskPriority
from appliance.settings import Settings

SMOKE_MESSAGES = [{"role": "user", "content": "Say hello."}]
OWN_CTX = 64  # tokens of a batched model's own Llama context (it renders and tokenizes; the batch decodes)
MB = 1024 * 1024
Served = LoadedModel | BatchedModel


class ModelFactory:
    """`compute`: one decode at a time on this machine, across models; `loading`: set while a new
    model loads and smoke-tests beside a serving one (the serving one then uses one thread fewer)."""

    def __init__(self, settings: Settings, metrics: Metrics, priority: KioskPriority | None) -> None:
        self.settings, self.metrics, self.priority = settings, metrics, priority
        self.compute = threading.Lock()
        self.loading = threading.Event()
        self._parallel_auto: int | None = None

    def load(self, info: ModelInfo, n_ctx: int | None = None) -> Any:
        from appliance.inference.llm import open_served

        return open_served(info.path, n_ctx=n_ctx or self.settings.inference_ctx, threads=self.threads,
                           gpu_layers=self.settings.inference_gpu_layers)

    @staticmethod
    def smoke(llm: Any) -> str:
        # Short on purpose: it runs beside the model being replaced.
        out = llm.create_chat_completion(messages=SMOKE_MESSAGES, max_tokens=4, temperature=0.0, seed=0)
        if out["usage"]["completion_tokens"] < 1:
            raise RuntimeError("the smoke test produced no token")
        return str(out["choices"][0]["message"]["content"] or "")

    def open(self, info: ModelInfo, available_mb: float) -> Served:
        """Starts loading on the model's own thread; `wait_ready()` on the result."""
        s = self.settings
        parallel = self.parallel(available_mb)
        if parallel == 1:  # the serial way: one request at a time, the others queue
            return LoadedModel(info, lambda: self.load(info), self.smoke, s.inference_queue, self.metrics,
                               self.compute, self.loading, self.threads, self.priority)
        return BatchedModel(info, lambda: self.load(info, n_ctx=OWN_CTX), self.smoke, s.inference_queue,
                            self.metrics, self.compute, self.loading, self.threads, self.priority,
                            parallel=parallel, ctx=s.inference_ctx)

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
        swap strategy."""
        return info.size / MB * 1.1 + 32 + self.kv_mb(self.parallel(available_mb))

    @property
    def threads(self) -> int:
        return self.settings.inference_threads or os.cpu_count() or 1
