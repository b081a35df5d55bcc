"""A streamed request on the batched engine, from the batch thread straight to the event loop.

The batch thread samples every sequence of a step, then posts each streamed sequence's events in one
`loop.call_soon_threadsafe`; the event loop turns them into OpenAI chunks (the shapes llama-cpp-python's
chat handler gives: a role chunk, a content chunk per token, a chunk with `finish_reason`, then
OpenAI's usage chunk when `stream_options.include_usage` asks) and queues them for the response.
No thread per request waits on each token: measured here with 8 streaming clients (bundled model's
Q8_0, 2 threads), waking 8 request threads per step and waiting for them cost 1.0 ms of a 27 ms
decode step. The request's thread only renders the chat template and hands the sequence over.

Events are those of `sequences.Sequence`: `("text", str)`, `("end", finish_reason, completion_tokens)`
or `("error", Exception)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.inference.engine import END, Job
from appliance.inference.protocol import usage_chunk
from appliance.inference.sequences import ends


class DirectStream:
    """One streamed request's chunks. `chat`: chat completion chunks, else text completion ones;
    `done`: called on the batch thread once the last event is posted (the model's request accounting)."""

    def __init__(self, job: Job, done: Callable[[], None]) -> None:
        self.job, self.done = job, done
        self.opened = False
        self._head: dict[str, Any] = {}
        self._prompt_tokens = 0
        self._started = False

    def open(self, ident: str, created: int, model: str, prompt_tokens: int) -> None:
        """The sequence is about to be queued (BatchedLlama.create_completion, the request's thread)."""
        ident = "chat" + ident if self.job.chat else ident
        self._head = {"id": ident, "object": "chat.completion.chunk" if self.job.chat else "text_completion",
                      "created": created, "model": model}
        self._prompt_tokens = prompt_tokens
        self.opened = True

    def post(self, events: list[tuple[Any, ...]]) -> None:
        """Batch thread: hand `events` to the event loop."""
        self.job.loop.call_soon_threadsafe(self._deliver, events)
        if ends(events):
            self.done()

    def _deliver(self, events: list[tuple[Any, ...]]) -> None:
        put = self.job.out.put_nowait
        for event in events:
            if event[0] == "error":
                put(event[1])
                return
            if self.job.chat and not self._started:
                put(self._chunk({"role": "assistant"}, None))
            self._started = True
            if event[0] == "text":
                put(self._chunk({"content": event[1]}, None) if self.job.chat else self._chunk(event[1], None))
                continue
            put(self._chunk({} if self.job.chat else "", event[1]))
            if self.job.usage:
                put(usage_chunk(self._head, self._prompt_tokens, event[2]))
            put(END)

    def _chunk(self, content: Any, reason: str | None) -> dict[str, Any]:
        if self.job.chat:
            choice = {"index": 0, "delta": content, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"text": content, "index": 0, "logprobs": None, "finish_reason": reason}
        return {**self._head, "choices": [choice]}
