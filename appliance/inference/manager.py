"""The inference server's model manager: which models the kiosk port serves, reconciled with the
deployments table (one model per channel: the site's default, and each named deployment), routing
a request's `model` to one of them, and the hot swap per channel (overlap, or drain when memory
cannot hold both), the smoke test and the refusal of a model that fails, the loading marker of a
load that did not survive.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from sqlmodel import Session

from appliance.bootstrap import Runtime
from appliance.db.tables import Deployment
from appliance.errors import NotFoundError
from appliance.inference.engine import Job, ModelInfo
from appliance.inference.factory import ModelFactory, Served
from appliance.inference.loading import LoadingMarker
from appliance.inference.metrics import Metrics
from appliance.jobs import deployments
from appliance.models.registry import BUNDLED_ID
from appliance.models.served import served_file
from appliance.serving import KioskPriority

log = logging.getLogger("appliance.inference")
Channel = str | None  # a deployment's name; None: the site's default


class Unavailable(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnknownModel(Exception):
    """A request's `model` names nothing served (404 model_not_found)."""


class Inference:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.settings = runtime.settings
        self.metrics = Metrics()
        self.served: dict[Channel, Served] = {}
        self.gaps: set[Channel] = set()  # channels draining for a swap: 503 + Retry-After
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.last_error: str | None = None
        # Kiosks first (appliance/serving.py): worker children wait while a request generates.
        s, paths = runtime.settings, runtime.paths
        priority = (KioskPriority(paths.serving_lock, paths.background_lock, min_share=s.training_min_share)
                    if s.serving_priority else None)
        self.models = ModelFactory(s, self.metrics, priority)
        self.marker = LoadingMarker(runtime.paths.inference_loading)

    @property
    def current(self) -> Served | None:
        """The site's default model."""
        return self.served.get(None)

    @property
    def gap(self) -> bool:
        return None in self.gaps

    def available_mb(self) -> float:
        if self.settings.inference_memory_mb:
            return self.settings.inference_memory_mb - self.models.resident_mb(list(self.served.values()))
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
        return float("inf")

    def _activate(self, channel: Channel, loaded: Served | None) -> None:
        with self.lock:
            if loaded is None:
                self.served.pop(channel, None)
            else:
                self.served[channel] = loaded
            self.gaps.discard(channel)
            models = list(self.served.values())
        self.metrics.active.replace_all([{"model": m.info.name, "deployment": m.info.deployment_id or "",
                                          "artifact": m.info.artifact_id or ""} for m in models])
        files: dict[str, int] = {}
        for m in models:
            files.update(m.resident())
        adapters = sum("@" in f for f in files)
        self.metrics.loaded.set(len(files) - adapters, kind="model")
        self.metrics.loaded.set(adapters, kind="adapter")

    # reconciling

    def info_for(self, dep: Deployment | None) -> ModelInfo | None:
        with Session(self.rt.engine) as session:
            if dep is None:
                try:
                    served = served_file(session, self.rt.paths, artifact_id=None, base_model_id=BUNDLED_ID)
                except Exception as exc:  # noqa: BLE001  (no bundled model: nothing to serve until a deployment)
                    self.last_error = (f"nothing to serve: no deployment, and the bundled model is not imported in "
                                       f"this data directory (`appliance api` or `appliance up` imports it) ({exc})")
                    return None
                return ModelInfo(key=f"base:{BUNDLED_ID}", name=served.name, path=served.path, size=_size(served.path))
            served = served_file(session, self.rt.paths, artifact_id=dep.artifact_id, base_model_id=dep.base_model_id)
            return ModelInfo(key=dep.id, name=dep.name or served.name, path=served.path,
                             size=_size(served.lora or served.path), deployment_id=dep.id,
                             artifact_id=dep.artifact_id, lora=served.lora)

    def reconcile_once(self) -> str | None:
        """Every channel to its target; a named channel with none left (all failed) stops being served."""
        with Session(self.rt.engine) as session:
            wanted: dict[Channel, Deployment | None] = dict(deployments.targets(session))
        wanted.setdefault(None, None)  # the default channel serves the bundled model until a deployment
        done = []
        for channel, dep in wanted.items():
            key = dep.id if dep is not None else f"base:{BUNDLED_ID}"
            loaded = self.served.get(channel)
            if loaded is not None and loaded.info.key == key:
                continue
            try:
                info = self.info_for(dep)
            except Exception as exc:  # noqa: BLE001
                if dep is not None:
                    deployments.mark_failed(engine=self.rt.engine, deployment_id=dep.id, error=f"cannot deploy: {exc}")
                done.append(f"failed {key}: {exc}")
                continue
            if info is not None:
                done.append(self.swap(info, channel))
        for channel in [c for c in self.served if c not in wanted]:
            old = self.served[channel]
            self._activate(channel, None)
            old.retire()
            done.append(f"stopped serving {channel}")
        return "; ".join(done) or None

    def swap(self, info: ModelInfo, channel: Channel = None) -> str:
        old = self.served.get(channel)
        available = self.available_mb()
        overlap = old is None or self.models.needed_mb(info, available) <= available
        strategy = "overlap" if overlap else "drain"
        gap_ms, gap_start = 0.0, time.monotonic()
        if not overlap:
            assert old is not None
            with self.lock:
                self.served.pop(channel, None)
                self.gaps.add(channel)  # new requests: 503 + Retry-After
            old.retire()
            old.join()
        self.marker.begin(info.deployment_id)
        if old is not None and overlap:
            self.models.loading.set()  # cleared by the new model once it has passed its smoke test
            old.make_room()
        loaded = self.models.open(info, self.available_mb())
        try:
            loaded.wait_ready()
        except Exception as exc:  # noqa: BLE001  (a bad model must never take serving down)
            self.models.loading.clear()
            reason = f"{info.name} failed to {'load' if loaded.llm is None else 'answer the smoke test'}: {exc}"
            self.metrics.swaps.inc(strategy=strategy, result="failed")
            self.last_error = reason
            if not overlap and old is not None:  # drained: bring the old model back
                back = self.models.open(old.info, self.available_mb())
                back.wait_ready()
                self._activate(channel, back)
            if info.deployment_id:
                deployments.mark_failed(engine=self.rt.engine, deployment_id=info.deployment_id, error=reason)
            log.warning(reason)
            self.marker.end()
            return f"failed {info.key}: {reason}"
        self.marker.end()
        load_ms = loaded.load_s * 1000
        if not overlap:
            gap_ms = (time.monotonic() - gap_start) * 1000
        self._activate(channel, loaded)  # atomic: from here on new requests go to the new model
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
        """Load the targets (the bundled model on the default channel before any deployment) in the
        background. A deployment whose load the previous process did not survive is loaded once
        more; twice, it is marked failed."""
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
        for loaded in list(self.served.values()):
            loaded.retire()
            loaded.join(10)

    # serving

    def route(self, model: str | None) -> Channel:
        """The channel a request's `model` asks for: none, "default" or "any", or the default model's
        own name: the default; a deployment's name: that one. Raises UnknownModel."""
        if not model or model in deployments.DEFAULT_ALIASES:
            return None
        with self.lock:
            if model in self.served or model in self.gaps:
                return model
            default = self.served.get(None)
        if default is not None and model == default.info.name:
            return None
        raise UnknownModel(model)

    def submit(self, job: Job, model: str | None = None) -> Served:
        channel = self.route(model)
        for _ in range(3):
            loaded = self.served.get(channel)
            if loaded is None:
                if channel in self.gaps:
                    raise Unavailable("the model is being swapped; retry shortly", 1)
                if channel is not None:
                    raise UnknownModel(model)
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
