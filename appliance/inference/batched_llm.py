"""What a request's code (appliance/inference/calls.py, llama-cpp-python's chat handlers) sees as
"the model" when it is served batched: the loaded `Llama` for the vocabulary, tokenizer and chat
template, with `create_completion` handing a `Sequence` to the batch thread instead of decoding in
the Llama's own context, and `n_ctx()` the context one request may use.

`create_completion` returns llama-cpp-python's shapes (a completion dict, or an iterator of
completion chunks ending with one that carries `finish_reason`), so its chat handlers turn them into
chat completions unchanged. One `BatchedLlama` per request: `generated` counts that request's tokens;
`adapter` names the LoRA adapter its sequence is decoded with; `direct`, given for a streamed request
of the server, takes its tokens to the event loop instead (appliance/inference/streams.py), and the
iterator returned is then never read.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from appliance.inference.sequences import Collected, Sampling, Sequence

if TYPE_CHECKING:
    from appliance.inference.batching import BatchedModel
    from appliance.inference.streams import DirectStream


class BatchedLlama:
    def __init__(self, model: BatchedModel, cancelled: threading.Event, adapter: str | None = None,
                 direct: DirectStream | None = None) -> None:
        self._model, self._cancelled, self._adapter, self._direct = model, cancelled, adapter, direct
        self._seq: Sequence | None = None
        self.collected: Collected | None = None  # an answer returned whole: its events and their times

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model.llm, name)

    def n_ctx(self) -> int:
        return self._model.ctx

    @property
    def generated(self) -> int:
        return self._seq.generated if self._seq is not None else 0

    @generated.setter
    def generated(self, value: int) -> None:
        pass  # counted per sequence; calls.py resets it for the serial Llama

    def create_chat_completion(self, **kwargs: Any) -> Any:
        from appliance.inference.calls import chat_handler

        return chat_handler(self._model.llm)(llama=self, **kwargs)

    def create_completion(self, prompt: list[int] | str, *, stream: bool = False, max_tokens: int | None = 16,
                          stop: str | list[str] | None = None, temperature: float = 0.8, top_p: float = 0.95,
                          top_k: int = 40, min_p: float = 0.05, typical_p: float = 1.0, seed: int | None = None,
                          repeat_penalty: float = 1.0, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                          logit_bias: dict[str, float] | None = None, grammar: Any = None,
                          **_unused: Any) -> Any:
        """llama-cpp-python's create_completion on the batch. `prompt`: token ids (or text,
        tokenized as llama-cpp-python does); `max_tokens` None or <= 0: the room left in the context."""
        llm = self._model.llm
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True) if isinstance(prompt, str) else prompt
        room = self._model.ctx - len(tokens)
        limit = room if max_tokens is None or max_tokens <= 0 else min(max_tokens, room)
        sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, typical_p=typical_p,
                            repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                            presence_penalty=presence_penalty, seed=seed,
                            logit_bias={int(k): float(v) for k, v in (logit_bias or {}).items()} or None,
                            grammar=grammar._grammar if grammar is not None else None)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        seq = Sequence(prompt=list(tokens), max_tokens=limit, sampling=sampling, stops=stops,
                       cancelled=self._cancelled, adapter=self._adapter)
        self._seq = seq
        ident, created, name = f"cmpl-{uuid.uuid4()}", int(time.time()), self._model.info.name
        if stream and self._direct is not None:  # its chunks are made on the event loop (streams.py)
            seq.sink = self._direct
            self._direct.open(ident, created, name, len(tokens))
            self._model.enqueue(seq)
            return iter(())
        if stream:
            seq.sink = queued = _Queued()
            self._model.enqueue(seq)
            return self._chunks(seq, queued, ident, created, name)
        seq.sink = self.collected = collected = Collected()
        self._model.enqueue(seq)
        last = collected.wait()
        text = "".join(event[1] for event in collected.events if event[0] == "text")
        return {"id": ident, "object": "text_completion", "created": created, "model": name,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": last[1]}],
                "usage": {"prompt_tokens": len(tokens), "completion_tokens": seq.generated,
                          "total_tokens": len(tokens) + seq.generated}}

    def score(self, prompt: list[int], targets: list[int]) -> list[float]:
        """-log p(targets[i] | prompt + targets[:i]) for each target (nats), from the logits this
        engine computes for a sequence (as kiosks' answers are sampled from them), decoded in the batch
        beside the others. The prompt's KV cells are reused from the seat that last held them (the
        question just answered), so only the targets are decoded. Raises ValueError when prompt +
        targets exceed the context of one request."""
        if not targets:
            return []
        if len(prompt) + len(targets) > self._model.ctx:
            raise ValueError(f"prompt ({len(prompt)}) + scored ({len(targets)}) tokens exceed the context of "
                             f"{self._model.ctx}")
        seq = Sequence(prompt=[*prompt, *targets[:-1]], max_tokens=0, sampling=Sampling(temperature=0.0), stops=[],
                       cancelled=self._cancelled, adapter=self._adapter, targets=list(targets))
        self._seq = seq
        seq.sink = collected = Collected()
        self._model.enqueue(seq)
        last = collected.wait()
        scored = next((list(event[1]) for event in collected.events if event[0] == "scored"), [])
        if len(scored) != len(targets):
            raise RuntimeError(f"scoring ended ({last[1]}) after {len(scored)} of {len(targets)} tokens")
        return scored

    def _chunks(self, seq: Sequence, sink: _Queued, ident: str, created: int, name: str) -> Iterator[dict[str, Any]]:
        """A stream read on this thread (outside the kiosk server, whose streams are direct): each
        event as llama-cpp-python's completion chunk, as the batch posts it."""
        ended = False

        def chunk(text: str, reason: str | None) -> dict[str, Any]:
            return {"id": ident, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": reason}]}

        try:
            while True:
                event = sink.events.get()
                if event[0] == "text":
                    yield chunk(event[1], None)
                    continue
                ended = True
                if event[0] == "error":
                    raise event[1]
                yield chunk("", event[1])
                return
        finally:
            if not ended:  # closed early (the client went away): free the sequence at the next step
                seq.cancelled.set()
                self._model.wake()


class _Queued:
    """A sink handing each event to the thread reading the stream."""

    def __init__(self) -> None:
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()

    def post(self, events: list[tuple[Any, ...]]) -> None:
        for event in events:
            self.events.put(event)
