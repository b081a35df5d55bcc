"""One model under evaluation: the GGUF loaded as the kiosk server loads it, questions answered as
the kiosk server answers them, and the reference answer's likelihood from the same model's logits.

Same engine, same template: the model is opened by `appliance.inference.llm.open_served` and the
prompt is rendered by the chat handler the server uses (`appliance.inference.calls.chat_handler`:
the GGUF's `tokenizer.chat_template`, with llama-cpp-python's Jinja formatter), tokenized by it, and
captured by the server's `PromptGuard` on its way to `create_completion`. Generation (`answer`) is a
temperature-0 chat completion (greedy), the sampling a kiosk gets when it asks for temperature 0;
`run.evaluate` answers through the kiosk server's continuous batching (appliance/evaluation/batched.py).

Reference NLL (nats per token): with P the prompt tokens and R the reference's tokens followed by
the end-of-turn token E (the EOS token the chat handler stops on, `<|im_end|>` for ChatML models;
a fine-tune must also learn to stop, so stopping is scored), NLL = -1/|R+E| * sum_i log
softmax(logits[|P|-1+i])[t_i] over t = R+E. R is found by tokenizing the prompt's text followed by
the reference and checking that the prompt's tokens are a prefix of the result (so R is how the
model would see the reference after the prompt); when a merge crosses the boundary (not seen with
BPE templates ending in a newline), R is the reference tokenized alone. `run.evaluate` scores on the
batched engine itself (`BatchedGenerator.reference_nll`: the formula on the logits rows the engine
computes for P+R, P's cells reused from the answer just generated, so only R+E is decoded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from appliance.inference.calls import PromptGuard, chat_handler
from appliance.inference.protocol import ChatRequest

DEFAULT_MAX_TOKENS = 128
DEFAULT_CTX = 4096


@dataclass
class Generation:
    text: str
    prompt: list[int]  # the prompt's token ids, as the server tokenized them
    tokens: int  # generated, end-of-generation token excluded
    finish_reason: str | None
    ttft_s: float
    tokens_per_s: float | None  # None with fewer than 2 tokens (no interval to measure)


def answer(llm: Any, messages: list[dict[str, str]], max_tokens: int) -> Generation:
    """Greedy chat completion of `messages` on `llm` (a batched engine's per-request `BatchedLlama`),
    rendered and checked as the kiosk server does, timed from this call: `ttft_s` to the first text,
    `tokens_per_s` over the rest, from the times the batch posted them (the answer is collected, so
    this thread wakes once). Under batching both are the latency of one request among those decoded
    with it, not the model's speed alone. Raises appliance.inference.protocol.ContextLengthExceeded
    when the prompt does not fit."""
    sampling = ChatRequest(messages=messages, temperature=0.0, max_tokens=max_tokens).sampling()
    guard = PromptGuard(llm, max_tokens)
    started = time.perf_counter()
    out = chat_handler(llm)(llama=guard, messages=messages, stream=False, **sampling)
    choice, times = out["choices"][0], llm.collected
    first, last = times.first_text_s, times.last_text_s
    n = llm.generated
    rate = (n - 1) / (last - first) if n > 1 and first is not None and last is not None and last > first else None
    return Generation(text=choice["message"]["content"] or "", prompt=guard.prompt, tokens=n,
                      finish_reason=choice.get("finish_reason"),
                      ttft_s=(first if first is not None else time.perf_counter()) - started, tokens_per_s=rate)


def reference_tokens(llm: Any, prompt: list[int], reference: str) -> list[int]:
    """The reference's tokens as they follow `prompt` (see the module's docstring), then the
    end-of-turn (EOS) token; `llm`: a llama-cpp-python Llama (its tokenizer)."""
    text = llm.detokenize(prompt, special=True)
    joint = llm.tokenize(text + reference.encode(), add_bos=False, special=True)
    if joint[:len(prompt)] == prompt:
        ref = joint[len(prompt):]
    else:
        ref = llm.tokenize(reference.encode(), add_bos=False, special=False)
    return [*ref, llm.token_eos()]


def as_messages(messages: list[Any]) -> list[dict[str, str]]:
    """EvalRow messages (pydantic) as the plain dicts the chat handler takes."""
    return [{"role": m.role, "content": m.content} for m in messages]
