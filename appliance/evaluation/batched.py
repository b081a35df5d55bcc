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
from typing import Any

from appliance.evaluation.model import DEFAULT_CTX, DEFAULT_MAX_TOKENS, Generation, answer, use_template

OWN_CTX = 64  # tokens of the loaded Llama's own context: it only renders and tokenizes (as factory.OWN_CTX)


class BatchedGenerator:
    """The GGUF at `path` served to up to `parallel` (>= 1) questions at once, each with up to
    `n_ctx` tokens (prompt + answer), decoded with `threads` llama.cpp threads (default all cores);
    the KV cache holds parallel x n_ctx cells. `chat_template`: as EvalModel's (None: the GGUF's
    own). `compute`: a lock held around every decode, to share with other llama.cpp work of this
    process (two decodes at once on the same cores only slow both). Blocks until loaded and
    smoke-tested; raises FileNotFoundError / ValueError for a missing or malformed GGUF, or why the
    smoke test failed."""

    def __init__(self, path: Path, *, parallel: int, n_ctx: int = DEFAULT_CTX, threads: int = 1,
                 gpu_layers: int = 0, chat_template: str | None = None,
                 compute: threading.Lock | None = None) -> None:
        from appliance.inference.batching import BatchedModel
        from appliance.inference.engine import ModelInfo
        from appliance.inference.factory import ModelFactory
        from appliance.inference.metrics import Metrics

        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, not {parallel}")
        self.compute = compute or threading.Lock()

        def load() -> Any:
            from appliance.inference.llm import open_served

            llm = open_served(path, n_ctx=OWN_CTX, threads=threads, gpu_layers=gpu_layers)
            use_template(llm, chat_template)
            return llm

        info = ModelInfo(key=f"eval:{path.name}", name=path.name, path=path, size=path.stat().st_size)
        self.model = BatchedModel(info, load, ModelFactory.smoke, 0, Metrics(), self.compute, threads=threads,
                                  parallel=parallel, ctx=n_ctx)
        try:
            self.model.wait_ready()
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

        return answer(BatchedLlama(self.model, cancelled or threading.Event()), messages, max_tokens)

    def close(self) -> None:
        """Let the answers in progress end, then free the batch context and the model."""
        self.model.retire()
        self.model.join()

    def __enter__(self) -> BatchedGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
