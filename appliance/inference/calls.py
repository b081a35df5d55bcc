"""Chat and text completions as a request runs them (engine.Job.call): on a serial model's thread, or on the
request's own thread against a batched model (batched_llm.BatchedLlama).

The prompt's tokens are counted and checked against the context before anything is generated, so
a prompt that does not fit is a 400 before a stream starts. llama-cpp-python checks inside its
generator, which made it a 200 followed by an error event (llama-cpp-python#983). Errors raised
here reach the request handler as the job's first item, before any byte of the answer is sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from appliance.inference.protocol import (
    DEFAULT_MAX_TOKENS,
    ChatRequest,
    CompletionRequest,
    ContextLengthExceeded,
    RequestError,
    usage_chunk,
)

Call = Callable[[Any], Any]


def fit_max_tokens(ctx: int, prompt: int, requested: int | None, param: str) -> int:
    """Tokens the answer may have. Asked for explicitly, prompt + answer must fit (as OpenAI does);
    by default the answer gets DEFAULT_MAX_TOKENS or the room that is left."""
    if prompt >= ctx:
        raise ContextLengthExceeded(ctx, f"your {param} resulted in {prompt} tokens", param)
    if requested is not None and prompt + requested > ctx:
        raise ContextLengthExceeded(
            ctx, f"you requested {prompt + requested} tokens ({prompt} in the {param}, {requested} in the "
            "completion)", param)
    return requested if requested is not None else min(DEFAULT_MAX_TOKENS, ctx - prompt)


def check_size(llm: Any, nbytes: int, param: str) -> None:
    """Over the context for certain, from the text's size alone: no token covers more bytes than
    the vocabulary's longest, so the prompt has at least nbytes / max_token_bytes tokens."""
    ctx = llm.n_ctx()
    if nbytes > ctx * llm.max_token_bytes:
        raise ContextLengthExceeded(
            ctx, f"your {param} hold {nbytes} bytes of text, more than {ctx} tokens of this model (no token "
            f"covers more than {llm.max_token_bytes} bytes)", param)


def check_logit_bias(llm: Any, bias: dict[str, float] | None) -> None:
    """Token ids past the vocabulary would index past llama.cpp's logits."""
    for key in bias or {}:
        if int(key) >= llm.n_vocab():
            raise RequestError(f"logit_bias: token id {key} is not in this model's vocabulary of {llm.n_vocab()}",
                               "logit_bias")


def chat_handler(llm: Any) -> Any:
    """llama-cpp-python's chat handler for this model, as create_chat_completion picks it: an explicit
    handler, else the one registered for the chat format (the GGUF's `tokenizer.chat_template`
    rendered with Jinja, "chat_template.default"), else a built-in format."""
    from llama_cpp import llama_chat_format

    return (llm.chat_handler or llm._chat_handlers.get(llm.chat_format)
            or llama_chat_format.get_chat_completion_handler(llm.chat_format))


class PromptGuard:
    """Stands in for the Llama given to llama-cpp-python's chat handler. The handler renders the
    model's chat template, tokenizes, then calls create_completion with the token ids: the exact
    prompt, whatever the template, checked here before generation starts."""

    def __init__(self, llm: Any, requested: int | None) -> None:
        self._llm, self.requested = llm, requested
        self.prompt_tokens: int | None = None
        self.prompt: list[int] = []  # the rendered, tokenized prompt (the evaluation scores after it)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def create_completion(self, prompt: list[int], **kwargs: Any) -> Any:
        self.prompt_tokens = len(prompt)
        self.prompt = list(prompt)
        kwargs["max_tokens"] = fit_max_tokens(self._llm.n_ctx(), len(prompt), self.requested, "messages")
        return self._llm.create_completion(prompt=prompt, **kwargs)


def chat_call(body: ChatRequest, messages: list[dict[str, str]], response_format: dict[str, Any] | None,
              nbytes: int) -> Call:
    def call(llm: Any) -> Any:
        check_size(llm, nbytes, "messages")
        check_logit_bias(llm, body.logit_bias)
        handler = chat_handler(llm)
        guard = PromptGuard(llm, body.requested_max_tokens())
        llm.generated = 0
        try:
            result = handler(llama=guard, messages=messages, stream=bool(body.stream),
                             response_format=response_format, **body.sampling())
        except RequestError:
            raise
        except Exception as exc:
            if guard.prompt_tokens is None:  # nothing generated yet: the template refused the messages
                raise RequestError(f"the model's chat template cannot render these messages: {exc}",
                                   "messages") from exc
            raise
        if body.include_usage:
            assert guard.prompt_tokens is not None
            return with_usage(result, llm, guard.prompt_tokens, "chat.completion.chunk")
        return result

    return call


def completion_call(body: CompletionRequest, prompt: str) -> Call:
    nbytes = len(prompt.encode())

    def call(llm: Any) -> Any:
        check_size(llm, nbytes, "prompt")
        check_logit_bias(llm, body.logit_bias)
        # As llama-cpp-python tokenizes a text prompt (BOS/EOS as the model asks); passing the ids
        # on means it is tokenized once, and checked before generation.
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        if not tokens and llm.token_bos() >= 0:
            tokens = [llm.token_bos()]  # OpenAI accepts an empty prompt: generate from the start
        if not tokens:
            raise RequestError("prompt is empty", "prompt")
        max_tokens = fit_max_tokens(llm.n_ctx(), len(tokens), body.max_tokens, "prompt")
        llm.generated = 0
        result = llm.create_completion(prompt=tokens, stream=bool(body.stream), max_tokens=max_tokens,
                                       **body.sampling())
        if body.include_usage:
            return with_usage(result, llm, len(tokens), "text_completion")
        return result

    return call


def with_usage(chunks: Iterator[dict[str, Any]], llm: Any, prompt_tokens: int, obj: str) -> Iterator[dict[str, Any]]:
    """The chunks, then OpenAI's usage chunk (`choices: []`), as `stream_options.include_usage` asks."""
    last: dict[str, Any] = {}
    try:
        for chunk in chunks:
            last = chunk
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    yield usage_chunk({**last, "object": obj, "created": last.get("created", int(time.time()))},
                      prompt_tokens, llm.generated)
