"""Prometheus text exposition, without a client library: a few counters, gauges and summaries."""

from __future__ import annotations

import threading
from collections import defaultdict


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_: str) -> None:
        self.name, self.help = name, help_
        self._values: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
        self._lock = threading.Lock()

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        with self._lock:
            for key, value in sorted(self._values.items()):
                lines.append(f"{self.name}{_labels(dict(key))} {value:.6g}")
        return lines


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._values[tuple(sorted(labels.items()))] += amount


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[tuple(sorted(labels.items()))] = value

    def replace_all(self, label_sets: list[dict[str, str]], value: float = 1.0) -> None:
        """These label sets as the only ones (e.g. the models served)."""
        with self._lock:
            self._values.clear()
            for labels in label_sets:
                self._values[tuple(sorted(labels.items()))] = value

    def replace(self, value: float, **labels: str) -> None:
        """Set this label set as the only one (e.g. the active model)."""
        with self._lock:
            self._values.clear()
            self._values[tuple(sorted(labels.items()))] = value


class Summary(_Metric):
    kind = "summary"

    def observe(self, value: float) -> None:
        with self._lock:
            self._values[(("_", "sum"),)] += value
            self._values[(("_", "count"),)] += 1

    def render(self) -> list[str]:
        with self._lock:
            total, count = self._values[(("_", "sum"),)], self._values[(("_", "count"),)]
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} summary",
                f"{self.name}_sum {total:.6g}", f"{self.name}_count {count:.6g}"]


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter("appliance_inference_requests_total", "Requests by endpoint and status code")
        self.errors = Counter("appliance_inference_errors_total", "Requests that failed (4xx/5xx) by reason")
        self.queue_depth = Gauge("appliance_inference_queue_depth", "Requests waiting for the model")
        self.tokens = Counter("appliance_inference_generated_tokens_total", "Tokens generated")
        self.generation_seconds = Counter("appliance_inference_generation_seconds_total",
                                          "Seconds spent generating (tokens/s = tokens / seconds)")
        self.tokens_per_s = Gauge("appliance_inference_tokens_per_second", "Generation speed of the last request")
        self.ttft = Summary("appliance_inference_time_to_first_token_seconds", "Time to first token")
        self.active = Gauge("appliance_inference_active_model", "The model being served (value 1)")
        self.loaded = Gauge("appliance_inference_loaded_files", "GGUF files loaded for the served deployments, by "
                            "kind: model (a shared base counted once) or adapter")
        self.swaps = Counter("appliance_inference_swaps_total", "Model swaps by strategy and result")
        self.held_back = Counter("appliance_inference_held_back_seconds_total",
                                 "Seconds requests were held back so training keeps its minimum share")
        self.sequences = Gauge("appliance_inference_sequences", "Requests in the batch now (generating or prefilling)")
        self.sequences_peak = Gauge("appliance_inference_sequences_peak",
                                    "The most requests decoded together in one step since the server started")
        self.peak = 0
        self.prompt_tokens_reused = Counter("appliance_inference_prompt_tokens_reused_total",
                                            "Prompt tokens not decoded again: a seat's cells held the same prefix")
        self.swap_gap = Gauge("appliance_inference_last_swap_gap_seconds", "Time without a model in the last swap")

    def render(self) -> str:
        out: list[str] = []
        for m in (self.requests, self.errors, self.queue_depth, self.tokens, self.generation_seconds,
                  self.tokens_per_s, self.ttft, self.active, self.loaded, self.swaps, self.held_back, self.swap_gap,
                  self.sequences, self.sequences_peak, self.prompt_tokens_reused):
            out += m.render()
        return "\n".join(out) + "\n"
