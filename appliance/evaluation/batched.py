"""Questions answered together on the kiosk server's continuous-batching engine.

An evaluation generates on the engine kiosks get: `appliance.inference.batching.BatchedModel`,
constructed as the inference server's `ModelFactory` constructs it (the GGUF opened by
`open_served` with a tiny context of its own for the tokenizer and chat template, the server's
smoke test, one KV stream per sequence), and a question is asked the way a kiosk request is
answered on it: llama-cpp-python's chat handler renders and tokenizes on the caller's thread, hands
a `Sequence` to the batch thread through a per-request `BatchedLlama`, and streams the answer back.
Up to `parallel` questions are decoded in one llama.cpp batch. Greedy answers decoded beside others
are token for token the answers decoded alone (a KV stream per sequence with flash attention: see
`BatchedModel._context`), so batching changes the time, not the answers.

`generate` may be called from `parallel` threads at once (each blocks until its answer ends); more
callers than `parallel` wait for a free seat inside the engine.
"""

from __future__ import annotations

import threading
from pathlib import Path

from appliance.evaluation.model import (
    DEFAULT_CTX,
    DEFAULT_MAX_TOKENS,
    Generation,
    answer,
    reference_tokens,
)


class BatchedGenerator:
    """The GGUF at `path` served to up to `parallel` (>= 1) questions at once, each with up to
    `n_ctx` tokens (prompt + answer), decoded with `threads` llama.cpp threads (default all cores);
    the KV cache holds parallel x n_ctx cells. `chat_template`: Jinja text to render prompts with (None: the GGUF's
    own). `lora_path`: a GGUF LoRA adapter every question is decoded with, added to the engine as
    the inference server adds an adapter deployment. `compute`: a lock held around every decode, to
    share with other llama.cpp work of this process (two decodes at once on the same cores only slow
    both). Blocks until loaded and smoke-tested; raises FileNotFoundError / ValueError for a missing
    or malformed GGUF or adapter, or why the smoke test failed."""

    ADAPTER = "evaluated"

    def __init__(self, path: Path, *, parallel: int, n_ctx: int = DEFAULT_CTX, threads: int = 1,
                 gpu_layers: int = 0, chat_template: str | None = None, lora_path: Path | None = None,
                 compute: threading.Lock | None = None) -> None:
        # Imported here: appliance.inference.batching loads llama.cpp, which the control plane
        # (importing appliance.evaluation for its schemas) never needs.
        from appliance.inference.batching import BatchedModel
        from appliance.inference.engine import LoadSpec, ModelInfo
        from appliance.inference.metrics import Metrics

        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, not {parallel}")
        self.compute = compute or threading.Lock()
        info = ModelInfo(key=f"eval:{path.name}", name=path.name, path=path, size=path.stat().st_size)
        spec = LoadSpec(n_ctx=n_ctx, threads=threads, gpu_layers=gpu_layers, chat_template=chat_template)
        self.model = BatchedModel(info, spec, 0, Metrics(), self.compute, parallel=parallel)
        self.adapter: str | None = None
        try:
            self.model.wait_ready()
            if lora_path is not None:
                self.model.add_adapter(self.ADAPTER, lora_path)
                self.adapter = self.ADAPTER
        except BaseException:
            self.close()
            raise

    def generate(self, messages: list[dict[str, str]], max_tokens: int = DEFAULT_MAX_TOKENS,
                 cancelled: threading.Event | None = None) -> Generation:
        """One question's greedy answer (see model.answer); `ttft_s` and `tokens_per_s` are this
        request's, among the others decoded with it. Setting `cancelled` ends the answer at the next
        decode step (finish_reason "cancelled"). Raises ContextLengthExceeded when the prompt does not
        fit n_ctx."""
        from appliance.inference.batched_llm import BatchedLlama

        return answer(BatchedLlama(self.model, cancelled or threading.Event(), adapter=self.adapter), messages,
                      max_tokens)

    def reference_nll(self, prompt: list[int], reference: str,
                      cancelled: threading.Event | None = None) -> tuple[float, int]:
        """(mean NLL in nats per token, tokens scored) of `reference` + end of turn after `prompt`
        (formula: model.py), from the engine's own logits (BatchedLlama.score), decoded in the batch
        beside the questions being answered. Raises ValueError when prompt + reference do not fit n_ctx."""
        from appliance.inference.batched_llm import BatchedLlama

        target = reference_tokens(self.model.llm, prompt, reference)
        nll = BatchedLlama(self.model, cancelled or threading.Event(), adapter=self.adapter).score(prompt, target)
        return sum(nll) / len(nll), len(nll)

    def close(self) -> None:
        """Let the answers in progress end, then free the batch context and the model."""
        self.model.retire()
        self.model.join()

    def __enter__(self) -> BatchedGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
