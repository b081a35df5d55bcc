"""The kiosk port as OpenAI clients use it (../shared/cases 10, 13, 14 and their other faces): a real
inference server process on 127.0.0.1 serving the bundled model. Every refusal is a 400 (413 for a
body over the limit) in OpenAI's error shape, naming the parameter, before any stream starts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import clone_data_dir
from test_inference import KEY, Server

CASES = Path(__file__).parent / "cases"
CTX = 1024  # what test_inference.Server gives the model
LIMIT = 1024 * 1024  # APPLIANCE_INFERENCE_MAX_REQUEST_BYTES for this module's server
QUESTION = [{"role": "user", "content": "How do I reset the fault light on the KX-200 press?"}]


@pytest.fixture(scope="module")
def server(template_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("kiosk") / "data"
    clone_data_dir(template_dir, data)
    srv = Server(data, APPLIANCE_INFERENCE_MAX_REQUEST_BYTES=str(LIMIT)).start()
    yield srv
    srv.stop()


def post(server: Server, body: Any, route: str = "chat/completions", raw: bytes | None = None) -> httpx.Response:
    return httpx.post(f"{server.base}/v1/{route}", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                      **({"content": raw} if raw is not None else {"json": body}))


def refused(res: httpx.Response, param: str | None, status: int = 400, code: str | None = None) -> str:
    assert res.status_code == status, res.text
    assert res.headers["content-type"].startswith("application/json")
    error = res.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code
    return str(error["message"])


def case(name: str) -> dict[str, Any]:
    return dict(json.loads((CASES / name).read_text()))


def warm(server: Server, body: dict[str, Any], route: str = "chat/completions") -> None:
    """llama.cpp reuses the cached prefix of the previous prompt, and the logits of a prompt whose
    last token alone is evaluated differ (slightly, enough to flip a greedy choice) from those of a
    prompt evaluated whole. Sending the prompt once first gives every compared request the same cache."""
    plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    assert post(server, plain, route).status_code == 200


def sse(res: httpx.Response) -> list[dict[str, Any]]:
    lines = [line[6:] for line in res.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


# --- case 13: content parts -------------------------------------------------------------------------


def test_case13_text_parts_are_joined_like_the_string_request(server: Server) -> None:
    from appliance.inference.messages import messages_of
    from appliance.inference.protocol import ChatRequest

    as_parts = messages_of(ChatRequest.model_validate(case("content_parts_request.json")))
    assert as_parts == case("content_parts_string.json")["messages"]
    warm(server, case("content_parts_string.json"))
    parts = post(server, case("content_parts_request.json"))
    string = post(server, case("content_parts_string.json"))
    assert parts.status_code == 200, parts.text
    assert string.status_code == 200, string.text
    assert parts.json()["usage"] == string.json()["usage"]
    assert parts.json()["choices"][0]["message"] == string.json()["choices"][0]["message"]


def test_case13_an_image_part_is_a_400_naming_the_content(server: Server) -> None:
    message = refused(post(server, case("content_parts_image.json")), "messages[0].content")
    assert "image_url" in message and "text only" in message


def test_developer_role_is_the_system_role(server: Server) -> None:
    def usage(role: str) -> Any:
        body = {"messages": [{"role": role, "content": "Be brief."}, *QUESTION], "max_tokens": 4, "temperature": 0}
        warm(server, body)
        res = post(server, body)
        assert res.status_code == 200, res.text
        return res.json()["usage"]["prompt_tokens"], res.json()["choices"][0]["message"]["content"]

    assert usage("developer") == usage("system")


BAD_MESSAGES = [
    ("unknown role", [{"role": "narrator", "content": "x"}], "messages[0].role", "supported roles"),
    ("tool role", [*QUESTION, {"role": "tool", "content": "{}"}], "messages[1].role", "tool and function"),
    ("content null", [{"role": "user", "content": None}], "messages[0].content", "null"),
    ("content missing", [{"role": "user"}], "messages[0].content", "null"),
    ("no role", [{"content": "Hello"}], "messages[0].role", "missing"),
    ("not an object", ["Hello"], "messages[0]", "message object"),
    ("content a number", [{"role": "user", "content": 42}], "messages[0].content", "text parts"),
    ("audio part", [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
     "messages[0].content", "text only"),
    ("tool calls", [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}],
     "messages[1].tool_calls", "tool and function"),
    ("unknown message key", [{"role": "user", "content": "Hi", "mood": "happy"}], "messages[0].mood", "unknown"),
    ("empty list", [], "messages", "empty"),
    ("not a list", "Hello", "messages", ""),
]


@pytest.mark.parametrize(("messages", "param", "needle"), [b[1:] for b in BAD_MESSAGES],
                         ids=[b[0] for b in BAD_MESSAGES])
def test_a_bad_message_is_a_400_naming_the_field(server: Server, messages: Any, param: str, needle: str) -> None:
    for stream in (False, True):
        message = refused(post(server, {"messages": messages, "max_tokens": 4, "stream": stream}), param)
        assert needle in message


# --- case 14: prompt over the context ---------------------------------------------------------------


def long_log() -> str:
    """The case's user message: ~10,000 tokens of a press log, about 20,000 characters."""
    log = "\n".join(f"2026-03-{1 + i // 24:02d} {i % 24:02d}:00 KX-200 press: cycle count {1200 + 37 * i}, "
                    f"pressure {170 + i % 13} bar, oil temperature {38 + i % 7} C, no faults." for i in range(200))
    return "Here is the log of the KX-200 press:\n" + log + "\nSummarize it in one sentence."


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not streamed"])
def test_case14_prompt_over_the_context_is_a_400_before_any_stream(server: Server, stream: bool) -> None:
    res = post(server, {"model": "any", "messages": [{"role": "user", "content": long_log()}], "max_tokens": None,
                        "stream": stream})
    message = refused(res, "messages", code="context_length_exceeded")
    assert f"maximum context length is {CTX} tokens" in message
    prompt_tokens = int(message.split("resulted in ")[1].split(" tokens")[0])
    assert prompt_tokens > 5000
    completion = post(server, {"prompt": long_log(), "stream": stream}, route="completions")
    assert "resulted in" in refused(completion, "prompt", code="context_length_exceeded")


def test_a_prompt_and_max_tokens_over_the_context_are_refused_with_both_counts(server: Server) -> None:
    res = post(server, {"messages": QUESTION, "max_tokens": CTX - 10})
    message = refused(res, "messages", code="context_length_exceeded")
    assert f"{CTX - 10} in the completion" in message
    short = {"model": "any", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": None,
             "temperature": 0, "seed": 0}  # the case's request_short_null.json: null is the default
    assert post(server, short).status_code == 200


def test_a_huge_prompt_is_refused_from_its_size_alone(server: Server) -> None:
    text = "word " * (LIMIT // 6)  # under the body limit, far over the context
    message = refused(post(server, {"messages": [{"role": "user", "content": text}], "stream": True}), "messages",
                      code="context_length_exceeded")
    assert "bytes of text" in message
    assert post(server, {"messages": QUESTION, "max_tokens": 2}).status_code == 200  # serving goes on


def test_a_body_over_the_limit_is_a_413(server: Server) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "x" * LIMIT}]}).encode()
    res = post(server, None, raw=body)
    assert res.status_code == 413, res.text
    assert res.json()["error"]["code"] == "request_too_large"
    chunked = httpx.post(f"{server.base}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                         content=iter([b'{"prompt": "', b"x" * LIMIT, b'"}']), timeout=120)
    assert chunked.status_code == 413, chunked.text


@pytest.mark.parametrize("route", ["chat/completions", "completions"])
def test_malformed_bodies_are_400_never_500(server: Server, route: str) -> None:
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    for raw in (b"{not json", b"[1, 2]", b"", deep, b'{"messages": ' + deep + b"}", b"\xff\xfe"):
        res = post(server, None, route=route, raw=raw)
        assert res.status_code == 400, (raw[:20], res.text)
        assert res.json()["error"]["type"] == "invalid_request_error"


def test_every_error_has_openai_shape(server: Server) -> None:
    missing = httpx.get(f"{server.base}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    wrong_key = httpx.get(f"{server.base}/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong_key.status_code == 401 and wrong_key.json()["error"]["code"] == "invalid_api_key"
    get_chat = httpx.get(f"{server.base}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert get_chat.status_code == 405 and "error" in get_chat.json()


# --- case 10: stream_options.include_usage ------------------------------------------------------------


@pytest.mark.parametrize("route", ["chat/completions", "completions"])
def test_case10_include_usage_ends_the_stream_with_the_exact_usage(server: Server, route: str) -> None:
    body = case("include_usage_request.json")
    if route == "completions":
        body = {k: v for k, v in body.items() if k != "messages"} | {"prompt": "The KX-200 press fault light"}
    warm(server, body, route)
    chunks = sse(post(server, body, route))
    *text_chunks, last = chunks
    assert last["choices"] == [] and all(c["choices"] for c in text_chunks)
    plain = post(server, {k: v for k, v in body.items() if k not in ("stream", "stream_options")}, route).json()
    assert last["usage"] == plain["usage"]
    assert last["id"] == text_chunks[0]["id"]
    without = sse(post(server, {k: v for k, v in body.items() if k != "stream_options"}, route))
    assert all(c["choices"] and "usage" not in c for c in without)
    if route == "chat/completions":
        streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in text_chunks)
        assert streamed == plain["choices"][0]["message"]["content"]


def test_include_usage_counts_a_stop_sequence_and_a_natural_end(server: Server) -> None:
    for extra in ({"stop": ["the"]}, {"max_tokens": 200}):
        body = {"messages": [{"role": "user", "content": "Say hello."}], "temperature": 0, "max_tokens": 40, **extra}
        warm(server, body)
        plain = post(server, body).json()
        last = sse(post(server, body | {"stream": True, "stream_options": {"include_usage": True}}))[-1]
        assert last["usage"] == plain["usage"], extra


def test_openapi_declares_the_request_bodies(server: Server) -> None:
    spec = httpx.get(f"{server.base}/openapi.json").json()
    for route, required in (("/v1/chat/completions", "messages"), ("/v1/completions", "prompt")):
        schema = spec["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert required in schema["required"] and schema["additionalProperties"] is False
        assert "$ref" not in json.dumps(schema)
