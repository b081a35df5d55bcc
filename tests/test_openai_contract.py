"""Every parameter of OpenAI's chat-completions (and completions) API, through the official `openai`
client against a real inference server on 127.0.0.1 with the bundled model: implemented and
checked, or refused with 400 `invalid_request_error` naming it. A parameter the client gains and
this file does not classify fails the first test."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import clone_data_dir
from test_inference import Server

from appliance.models.registry import BUNDLED_ID

QUESTION = [{"role": "user", "content": "Where is the pharmacy?"}]
CLIENT_ONLY = {"extra_body", "extra_headers", "extra_query", "timeout", "model", "messages", "prompt", "stream"}
TOOL = {"type": "function", "function": {"name": "hours", "parameters": {"type": "object", "properties": {}}}}

# Implemented: checked in the tests below.
CHAT_IMPLEMENTED = {"max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n", "user",
                    "presence_penalty", "frequency_penalty", "logit_bias", "response_format", "stream_options",
                    "logprobs", "store", "service_tier", "safety_identifier", "prompt_cache_key", "modalities"}
# (parameter, a value we refuse, the param named in the 400)
CHAT_REFUSED: list[tuple[str, Any, str]] = [
    ("n", 2, "n"), ("logprobs", True, "logprobs"), ("top_logprobs", 2, "top_logprobs"),
    ("tools", [TOOL], "tools"), ("tool_choice", "auto", "tool_choice"), ("parallel_tool_calls", True,
                                                                          "parallel_tool_calls"),
    ("functions", [TOOL["function"]], "functions"), ("function_call", "auto", "function_call"),
    ("store", True, "store"), ("metadata", {"site": "a"}, "metadata"), ("service_tier", "flex", "service_tier"),
    ("modalities", ["text", "audio"], "modalities"), ("audio", {"voice": "alloy", "format": "wav"}, "audio"),
    ("prediction", {"type": "content", "content": "x"}, "prediction"), ("reasoning_effort", "low", "reasoning_effort"),
    ("verbosity", "low", "verbosity"), ("web_search_options", {}, "web_search_options"),
    ("moderation", {"model": "omni"}, "moderation"), ("prompt_cache_options", {"ttl": "1h"}, "prompt_cache_options"),
    ("prompt_cache_retention", "24h", "prompt_cache_retention"),
    # OpenAI's ranges
    ("temperature", 2.5, "temperature"), ("top_p", 1.5, "top_p"), ("presence_penalty", 3, "presence_penalty"),
    ("frequency_penalty", -3, "frequency_penalty"), ("max_tokens", 0, "max_tokens"),
    ("max_completion_tokens", 0, "max_completion_tokens"), ("logit_bias", {"5": 200}, "logit_bias"),
    ("logit_bias", {"hello": 1}, "logit_bias"), ("logit_bias", {"999999": 5}, "logit_bias"),
    ("stop", ["a", "b", "c", "d", "e"], "stop"), ("stop", "", "stop"),
    ("stream_options", {"include_usage": True}, "stream_options"),  # without stream
    ("response_format", {"type": "grammar"}, "response_format.type"),
    ("response_format", {"type": "json_schema"}, "response_format.json_schema"),
    # Numbers as numbers (pydantic's lax mode took "0.5" and true)
    ("max_tokens", True, "max_tokens"), ("temperature", "0.5", "temperature"), ("seed", "3", "seed"),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "$ref":
                                                                                          "#/nowhere"}}},
     "response_format.json_schema.schema"),
    # A NUL no token can produce: llama.cpp aborted the whole server at the answer's end.
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"const": "\u0000"}}},
     "response_format.json_schema.schema"),
    ("response_format", {"type": "json_object", "schema": {"type": "object", "properties": {"k\u0000": {}}}},
     "response_format.schema"),
]
COMPLETION_IMPLEMENTED = {"max_tokens", "temperature", "top_p", "seed", "stop", "n", "user", "presence_penalty",
                          "frequency_penalty", "logit_bias", "stream_options", "echo", "best_of"}
COMPLETION_REFUSED: list[tuple[str, Any, str]] = [
    ("n", 2, "n"), ("echo", True, "echo"), ("best_of", 2, "best_of"), ("suffix", "end.", "suffix"),
    ("logprobs", 1, "logprobs"), ("temperature", -1, "temperature"), ("prompt", [[1, 2, 3]], "prompt"),
    ("max_tokens", True, "max_tokens"),
]


@pytest.fixture(scope="module")
def client(template_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    data = tmp_path_factory.mktemp("contract") / "data"
    clone_data_dir(template_dir, data)
    server = Server(data).start()
    yield server.client()
    server.stop()


def chat(client: openai.OpenAI, **kw: Any) -> Any:
    return client.chat.completions.create(model="any", messages=kw.pop("messages", QUESTION),
                                          **{"max_tokens": 8, "temperature": 0, **kw})


def test_every_client_parameter_is_classified() -> None:
    probe = openai.OpenAI(api_key="x", base_url="http://127.0.0.1:9/v1")
    for create, implemented, refused in ((probe.chat.completions.create, CHAT_IMPLEMENTED, CHAT_REFUSED),
                                         (probe.completions.create, COMPLETION_IMPLEMENTED, COMPLETION_REFUSED)):
        params = set(inspect.signature(create).parameters) - CLIENT_ONLY
        assert params - implemented - {r[0] for r in refused} == set()


@pytest.mark.parametrize(("name", "value", "param"), CHAT_REFUSED, ids=[f"{r[0]}={r[1]!r}"[:40] for r in CHAT_REFUSED])
def test_refused_chat_parameters_are_400_naming_them(client: openai.OpenAI, name: str, value: Any, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, **{name: value})
    assert info.value.status_code == 400
    assert (info.value.type, info.value.param) == ("invalid_request_error", param), info.value.body


@pytest.mark.parametrize(("name", "value", "param"), COMPLETION_REFUSED, ids=[r[0] for r in COMPLETION_REFUSED])
def test_refused_completion_parameters_are_400_naming_them(
    client: openai.OpenAI, name: str, value: Any, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(**{"model": "any", "prompt": "The pharmacy is", "max_tokens": 4, name: value})
    assert (info.value.type, info.value.param) == ("invalid_request_error", param), info.value.body


def test_an_unknown_parameter_is_refused_not_ignored(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, extra_body={"temprature": 0.2})
    assert info.value.param == "temprature"


def test_max_tokens_and_its_alias(client: openai.OpenAI) -> None:
    for kw in ({"max_tokens": 3}, {"max_completion_tokens": 3}, {"max_tokens": 50, "max_completion_tokens": 3}):
        res = chat(client, **kw)
        assert res.usage is not None and res.usage.completion_tokens == 3, kw
        assert res.choices[0].finish_reason == "length"


def test_sampling_parameters_are_applied(client: openai.OpenAI, template_dir: Path) -> None:
    chat(client)  # the same cached prefix for every compared request (see test_kiosk_api.warm)
    greedy = chat(client, max_tokens=12).choices[0].message.content or ""
    assert chat(client, max_tokens=12, n=1, logprobs=False, store=False, service_tier="auto", user="kiosk-7",
                safety_identifier="kiosk-7", prompt_cache_key="faq", modalities=["text"],
                top_p=1.0).choices[0].message.content == greedy
    word = greedy.split()[2]
    stopped = chat(client, max_tokens=12, stop=[word]).choices[0]
    assert (stopped.message.content, stopped.finish_reason) == (greedy[: greedy.index(word)], "stop")
    seeded = [chat(client, temperature=1.0, seed=7, max_tokens=12).choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(template_dir / "models" / BUNDLED_ID / "hf" / "tokenizer.json"))
    bang = tok.token_to_id("!")
    assert chat(client, max_tokens=3, logit_bias={str(bang): 100}).choices[0].message.content == "!!!"
    penalized = chat(client, max_tokens=12, presence_penalty=2.0, frequency_penalty=2.0)
    assert penalized.usage is not None and penalized.usage.completion_tokens > 0


def test_response_format_and_streamed_usage(client: openai.OpenAI) -> None:
    res = chat(client, response_format={"type": "json_object"}, max_tokens=20,
               messages=[{"role": "user", "content": "Reply with a JSON object."}])
    assert (res.choices[0].message.content or "").lstrip().startswith("{")
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


def test_completion_parameters_are_applied(client: openai.OpenAI) -> None:
    res = client.completions.create(model="any", prompt="The pharmacy is", max_tokens=4, temperature=0, n=1,
                                    echo=False, best_of=1, user="kiosk-7", seed=1, top_p=1.0)
    assert res.usage is not None and res.usage.completion_tokens == 4
    chunks = list(client.completions.create(model="any", prompt="The pharmacy is", max_tokens=4, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
