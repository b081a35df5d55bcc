"""What crosses the kiosk port: OpenAI's request bodies, validated and normalized before a model
sees them, and OpenAI's error shape for every refusal.

Each chat-completions parameter in OpenAI's reference is either implemented or refused with 400
`invalid_request_error` naming it (`param`); none is accepted and then ignored. Found by fuzzing
the old server: 211 of 465 requests answered 500 (content parts, `content: null`, a message without
`role`), so everything a template or llama.cpp could trip on is checked here first.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_MAX_TOKENS = 512  # when a request names none (never past the room left in the context)
NO_TOOLS = "tool and function calling is not supported by this server"


class RequestError(Exception):
    """A request refused before generation: OpenAI's error body with `param` and `code`."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = message, param, code, status, kind

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


class ContextLengthExceeded(RequestError):
    """OpenAI's wording and code; `clause` says what did not fit (with the token counts)."""

    def __init__(self, ctx: int, clause: str, param: str) -> None:
        super().__init__(f"This model's maximum context length is {ctx} tokens. However, {clause}. Please reduce "
                         f"the length of the {param} or of the completion.", param, "context_length_exceeded")


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage_chunk(head: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """OpenAI's last stream chunk when `stream_options.include_usage` asks: no choices, the usage.
    `head`: the stream's other chunks, whose `id`, `object`, `created` and `model` it repeats."""
    return {"id": head.get("id", ""), "object": head["object"], "created": head["created"],
            "model": head.get("model", ""), "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Parameters both routes implement. Unknown keys are refused (extra='forbid'), never ignored; a
    number given as a string or a boolean is refused as OpenAI does (strict=True: pydantic's lax mode
    took "0.5" and true)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="A deployment's name (GET /v1/models); none, 'default' or "
                              "'any': the site's default deployment")
    max_tokens: int | None = Field(None, ge=1, strict=True, description=f"Default {DEFAULT_MAX_TOKENS}")
    temperature: float | None = Field(None, ge=0, le=2, strict=True, description="Default 0.7")
    top_p: float | None = Field(None, ge=0, le=1, strict=True, description="Default 0.95")
    seed: int | None = Field(None, strict=True)
    stop: str | list[str] | None = Field(None, description="Up to 4 sequences")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2, strict=True)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, strict=True)
    logit_bias: dict[str, float] | None = Field(None, description="Token id -> bias in -100..100")
    n: int | None = Field(None, ge=1, le=128, strict=True, description="Only 1")
    user: str | None = Field(None, description="An end-user identifier: recorded nowhere, changes nothing")
    # llama.cpp's own sampling knobs (llama-cpp-python's server accepts them too)
    top_k: int | None = Field(None, ge=0, strict=True)
    min_p: float | None = Field(None, ge=0, le=1, strict=True)
    repeat_penalty: float | None = Field(None, gt=0, strict=True)

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments for llama-cpp-python; what the request leaves out keeps its default."""
        out: dict[str, Any] = {"temperature": 0.7 if self.temperature is None else self.temperature,
                               "top_p": 0.95 if self.top_p is None else self.top_p}
        for key in ("seed", "stop", "presence_penalty", "frequency_penalty", "logit_bias", "top_k", "min_p",
                    "repeat_penalty"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampling):
    messages: list[Any] = Field(description="system/developer, user and assistant messages; text content only")
    max_completion_tokens: int | None = Field(None, ge=1, strict=True,
                                              description="Alias of max_tokens (wins when both)")
    response_format: dict[str, Any] | None = Field(None, description="text, json_object or json_schema")
    # OpenAI parameters refused unless given their neutral value (see REFUSED)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20, strict=True)
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: Any = None
    safety_identifier: str | None = Field(None, description="An end-user identifier: changes nothing")
    prompt_cache_key: str | None = Field(None, description="Accepted; llama.cpp reuses a matching prefix anyway")
    prompt_cache_retention: str | None = None
    prompt_cache_options: Any = None
    moderation: Any = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def response_format_for_llama(self) -> dict[str, Any] | None:
        rf = self.response_format
        if not rf or rf.get("type") == "text":
            return None
        if rf.get("type") == "json_schema":
            if not isinstance(rf.get("json_schema"), dict):
                raise RequestError("response_format.json_schema is required with type json_schema (an object: "
                                   "name, schema)", "response_format.json_schema")
            schema = rf["json_schema"].get("schema")
            _check_schema(schema, "response_format.json_schema.schema")
            return {"type": "json_object", "schema": schema} if schema else {"type": "json_object"}
        if rf.get("type") == "json_object":
            _check_schema(rf.get("schema"), "response_format.schema")
            return {"type": "json_object", **({"schema": rf["schema"]} if "schema" in rf else {})}
        raise RequestError(f"response_format.type {rf.get('type')!r} is not supported (text, json_object, "
                           "json_schema)", "response_format.type")


def _check_schema(schema: Any, param: str) -> None:
    """A schema llama.cpp cannot turn into a grammar would silently become 'any JSON' in
    llama-cpp-python (it falls back): refuse it instead."""
    if schema is None:
        return
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        nul = _holds_nul(schema)
        if not nul:
            json_schema_to_gbnf(json.dumps(schema))
    except RecursionError as exc:
        raise RequestError(f"{param}: nested too deeply", param) from exc
    except Exception as exc:  # noqa: BLE001  (the converter raises several types)
        raise RequestError(f"{param}: not a JSON schema this server can enforce ({exc})", param) from exc
    if nul:
        # No token's text holds a NUL (llama.cpp handles pieces as C strings), so the grammar can only
        # end the answer where it may not end, and llama.cpp then aborts the whole process
        # (llama_grammar_accept_impl: GGML_ABORT on an end-of-generation token the grammar refuses).
        raise RequestError(f"{param}: holds a NUL character (\\u0000), which no token of the model can "
                           "produce", param)


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(description="One prompt (a string, or a list holding one string)")
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = None
    best_of: int | None = Field(None, ge=1, le=20)
    suffix: str | None = None


# param: (values accepted, why the others are refused)
REFUSED: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((None, 1), "one choice per request (n=1); send several requests for several answers"),
    "logprobs": ((None, False), "log probabilities are not computed by this server"),
    "top_logprobs": ((None,), "log probabilities are not computed by this server"),
    "tools": ((None, []), NO_TOOLS),
    "tool_choice": ((None, "none"), NO_TOOLS),
    "parallel_tool_calls": ((None,), NO_TOOLS),
    "functions": ((None, []), NO_TOOLS),
    "function_call": ((None, "none"), NO_TOOLS),
    "store": ((None, False), "completions are not stored by this server"),
    "metadata": ((None, {}), "metadata is kept only with store, which this server does not do"),
    "service_tier": ((None, "auto", "default"), "one local tier: 'auto' or 'default'"),
    "modalities": ((None, ["text"]), "this server answers with text only"),
    "audio": ((None,), "audio output is not supported"),
    "prediction": ((None,), "predicted outputs are not supported"),
    "reasoning_effort": ((None,), "the served model is not a reasoning model"),
    "verbosity": ((None,), "not supported by the served model"),
    "web_search_options": ((None,), "no web search: the appliance is offline"),
    "moderation": ((None,), "no moderation model runs on this server"),
    "prompt_cache_options": ((None,), "llama.cpp reuses the previous prompt's prefix by itself; no options"),
    "prompt_cache_retention": ((None, "in_memory"), "only the previous prompt's prefix is kept, in memory"),
    "echo": ((None, False), "echoing the prompt is not supported"),
    "best_of": ((None, 1), "one candidate per request (best_of=1)"),
    "suffix": ((None,), "insertion (suffix) is not supported by the served model"),
}


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """The request body for the route's OpenAPI (the routes read the raw body themselves, to bound
    its size and answer in OpenAI's error shape), with pydantic's $defs inlined."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


def parse(raw: bytes, model: type[ChatRequest] | type[CompletionRequest]) -> Any:
    """The body as a request model, or RequestError naming the first bad parameter."""
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError as exc:
        raise RequestError("the request body is JSON nested too deeply") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = _param(err["loc"])
        what = "unknown parameter (not part of OpenAI's API, or not one this server has)" \
            if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise RequestError(f"{param}: {what}", param) from exc
    except RecursionError as exc:
        raise RequestError("the request body is JSON nested too deeply") from exc
    for name, (accepted, why) in REFUSED.items():
        if name in type(body).model_fields and getattr(body, name) not in accepted:
            raise RequestError(f"{name}={getattr(body, name)!r} is not supported: {why}", name, "unsupported_parameter")
    _check_common(body)
    return body


def _no_constant(name: str) -> Any:
    raise RequestError(f"{name} is not a JSON number")


def _param(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location as OpenAI's `param` (messages[0].content), without the names of
    union members pydantic puts in it ('str', 'list[str]', 'StreamOptions')."""
    out = ""
    for part in loc:
        if isinstance(part, str) and (part in ("str", "int", "float", "bool", "StreamOptions") or "[" in part):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _check_common(body: _Sampling) -> None:
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if len(stops) > 4:
        raise RequestError("stop: at most 4 sequences", "stop")
    if any(not s for s in stops):
        raise RequestError("stop: a stop sequence must not be empty", "stop")
    if body.stream_options is not None and not body.stream:
        raise RequestError("stream_options is only allowed with stream=true", "stream_options")
    for key, bias in (body.logit_bias or {}).items():
        if not key.isdigit():
            raise RequestError(f"logit_bias: keys are token ids, got {key!r}", "logit_bias")
        if not -100 <= bias <= 100:
            raise RequestError(f"logit_bias[{key}]: a bias is between -100 and 100, got {bias}", "logit_bias")
