"""The inference server's model manager: which model the kiosk port serves, reconciled with the
deployments table, and the hot swap (overlap, or drain when memory cannot hold two models), the
smoke test and the refusal of a model that fails, the loading marker of a load that did not survive.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from sqlmodel import Session

from appliance.bootstrap import Runtime
from appliance.db.tables import Deployment
from appliance.errors import NotFoundError
from appliance.inference.batching import BatchedModel
from appliance.inference.engine import Job, LoadedModel, ModelInfo
from appliance.inference.loading import LoadingMarker
from appliance.inference.metrics import Metrics
from appliance.jobs import deployments
from appliance.models.registry import BUNDLED_ID
from appliance.serving import KioskPriority

log = logging.getLogger("appliance.inference")
SMOKE_MESSAGES = [{"role": "user", "content": "Say hello."}]
OWN_CTX = 64  # tokens of a batched model's own Llama context (unused for generation)
MB = 1024 * 1024
Served = LoadedModel | BatchedModel


class Unavailable(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Inference:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.settings = runtime.settings
        self.metrics = Metrics()
        self.current: Served | None = None
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
        self.marker = LoadingMarker(runtime.paths.inference_loading)
        self._parallel_auto: int | None = None

    # loading

    def load(self, info: ModelInfo, n_ctx: int | None = None) -> Any:
        from appliance.inference.llm import open_served

        return open_served(info.path, n_ctx=n_ctx or self.settings.inference_ctx, threads=self.threads,
                           gpu_layers=self.settings.inference_gpu_layers)

    @staticmethod
    def smoke(llm: Any) -> str:
        # Short on purpose: it runs between two requests of the model being replaced.
        out = llm.create_chat_completion(messages=SMOKE_MESSAGES, max_tokens=4, temperature=0.0, seed=0)
        if out["usage"]["completion_tokens"] < 1:
            raise RuntimeError("the smoke test produced no token")
        return str(out["choices"][0]["message"]["content"] or "")

    def _new_model(self, info: ModelInfo) -> Served:
        if self.parallel == 1:  # the serial way: one request at a time, the others queue
            return LoadedModel(info, lambda: self.load(info), self.smoke, self.settings.inference_queue,
                               self.metrics, self.compute, self.loading, self.threads, self.priority)
        # The Llama's own context only renders and tokenizes; the batch has a context of its own.
        return BatchedModel(info, lambda: self.load(info, n_ctx=OWN_CTX), self.smoke, self.settings.inference_queue,
                            self.metrics, self.compute, self.loading, self.threads, self.priority,
                            parallel=self.parallel, ctx=self.settings.inference_ctx)

    @property
    def parallel(self) -> int:
        """Sequences decoded together: the setting, or (0) what memory allows, between 4 and 8."""
        if self.settings.inference_parallel:
            return self.settings.inference_parallel
        fits = int(self.available_mb() / 4 / self.kv_mb(1)) if self._parallel_auto is None else self._parallel_auto
        self._parallel_auto = max(4, min(8, fits))
        return self._parallel_auto

    def kv_mb(self, sequences: int) -> float:
        # KV cache and compute buffers; measured ~60 MB for a 135M model at 4096 tokens (one sequence).
        return sequences * self.settings.inference_ctx / 64

    @property
    def threads(self) -> int:
        return self.settings.inference_threads or os.cpu_count() or 1

    def _activate(self, loaded: Served | None) -> None:
        with self.lock:
            self.current, self.gap = loaded, False
        if loaded is not None:
            self.metrics.active.replace(1, model=loaded.info.name, deployment=loaded.info.deployment_id or "",
                                        artifact=loaded.info.artifact_id or "")

    def available_mb(self) -> float:
        if self.settings.inference_memory_mb:
            used = self.current.info.size / MB if self.current else 0
            return self.settings.inference_memory_mb - used
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
        return float("inf")

    def needed_mb(self, info: ModelInfo) -> float:
        # Weights (mapped) plus the KV cache and compute buffers; measured ~60 MB for a 135M model at
        # 4096 tokens. A rough upper bound is enough to pick the strategy.
        return info.size / MB * 1.1 + 32 + self.kv_mb(self.parallel)

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
        if self.current is not None and self.current.info.key == want:
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
        old = self.current
        overlap = old is None or self.needed_mb(info) <= self.available_mb()
        strategy = "overlap" if overlap else "drain"
        gap_ms = 0.0
        if not overlap:
            assert old is not None
            with self.lock:
                self.current, self.gap = None, True  # new requests: 503 + Retry-After
            gap_start = time.monotonic()
            old.retire()
            old.join()
        self.marker.begin(info.deployment_id)
        if old is not None and overlap:
            self.loading.set()  # cleared by the new model once it has passed its smoke test
            old.make_room()
        loaded = self._new_model(info)
        try:
            loaded.wait_ready()
        except Exception as exc:  # noqa: BLE001  (a bad model must never take serving down)
            self.loading.clear()
            reason = f"{info.name} failed to {'load' if loaded.llm is None else 'answer the smoke test'}: {exc}"
            self.metrics.swaps.inc(strategy=strategy, result="failed")
            self.last_error = reason
            if not overlap and old is not None:  # drained: bring the old model back
                back = self._new_model(old.info)
                back.wait_ready()
                self._activate(back)
            if info.deployment_id:
                deployments.mark_failed(engine=self.rt.engine, deployment_id=info.deployment_id, error=reason)
            log.warning(reason)
            self.marker.end()
            return f"failed {info.key}: {reason}"
        self.marker.end()
        load_ms = loaded.load_s * 1000
        if not overlap:
            gap_ms = (time.monotonic() - gap_start) * 1000
        self._activate(loaded)  # atomic: from here on new requests go to the new model
        if overlap and old is not None:
            old.retire()  # in-flight requests finish on the old model, then it is closed
        self.metrics.swaps.inc(strategy=strategy, result="ok")
        self.metrics.swap_gap.set(gap_ms / 1000)
        if info.deployment_id:
            deployments.mark_active(engine=self.rt.engine, deployment_id=info.deployment_id, strategy=strategy,
                                    gap_ms=gap_ms, load_ms=load_ms, smoke_text=loaded.smoke_text)
        log.info("serving %s (%s, load %.0f ms, gap %.0f ms)", info.name, strategy, load_ms, gap_ms)
        return f"serving {info.key} ({strategy})"

    def start_startup_load(self) -> None:
        """Load the target deployment (or the bundled model) in the background. A deployment whose
        load the previous process did not survive is loaded once more; twice, it is marked failed."""
        refused = self.marker.recover()
        if refused:
            try:
                deployments.mark_failed(engine=self.rt.engine, deployment_id=refused,
                                        error="the inference server died twice while loading this model; "
                                              "it was not served")
            except NotFoundError:
                log.warning("the deployment named by the loading marker, %s, does not exist", refused)
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
        if self.current is not None:
            self.current.retire()
            self.current.join(10)

    # serving

    def submit(self, job: Job) -> Served:
        for _ in range(3):
            loaded = self.current
            if loaded is None:
                if self.gap:
                    raise Unavailable("the model is being swapped; retry shortly", 1)
                raise Unavailable("no model is loaded yet", 5)
            outcome = loaded.submit(job)
            if outcome == "ok":
                return loaded
            if outcome == "full":
                raise Unavailable(f"the request queue is full ({self.settings.inference_queue} waiting)", 1)
        raise Unavailable("the model is being swapped; retry shortly", 1)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
