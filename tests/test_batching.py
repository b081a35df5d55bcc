"""Continuous batching on the real bundled model, through the real server and the `openai` client:
requests decoded together answer exactly what they answer alone (greedy and fixed seeds), each with
its own stop strings and JSON schema; a client that goes away frees its sequence; a request that
cannot fit its context is a 400 with the token counts before any stream starts."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import clone_data_dir
from test_inference import WAIT_S, Server

PROMPTS = ["Where is the pharmacy?", "What is the capital of France?", "Tell me a joke.", "Count to five."]


@pytest.fixture(scope="module")
def server(template_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("batching") / "data"
    clone_data_dir(template_dir, data)
    server = Server(data, APPLIANCE_INFERENCE_PARALLEL="4").start()
    yield server
    server.stop()


def ask(client: openai.OpenAI, prompt: str, **kw: Any) -> tuple[str, str | None]:
    """(text, finish_reason), streamed or not."""
    body: dict[str, Any] = {"max_tokens": 40, "temperature": 0, **kw}
    res = client.chat.completions.create(model="any", messages=[{"role": "user", "content": prompt}], **body)
    if not body.get("stream"):
        return res.choices[0].message.content or "", res.choices[0].finish_reason
    text, reason = [], None
    for chunk in res:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            reason = chunk.choices[0].finish_reason or reason
    return "".join(text), reason


def together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls at once (released together by a barrier); results in order, errors raised."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not errors, errors
    return results


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.base}/metrics").text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def test_requests_decoded_together_answer_as_they_do_alone(server: Server) -> None:
    client = server.client()
    kinds: list[dict[str, Any]] = [{}, {"stream": True}, {"temperature": 0.9, "seed": 7},
                                   {"temperature": 0.9, "seed": 11, "stream": True}]
    alone = [ask(client, p, **kw) for p, kw in zip(PROMPTS, kinds, strict=True)]
    batched = together([lambda p=p, kw=kw: ask(client, p, **kw) for p, kw in zip(PROMPTS, kinds, strict=True)])
    assert batched == alone
    assert metric(server, "appliance_inference_sequences_peak") >= 2  # they did share decode steps
    assert metric(server, "appliance_inference_prompt_tokens_reused_total") > 0  # the chat preamble, at least


def test_stop_strings_and_json_schema_hold_inside_a_batch(server: Server) -> None:
    client = server.client()
    plain, _ = ask(client, PROMPTS[0])
    word = plain.split()[3]
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "floor": {"type": "integer"}},
              "required": ["city", "floor"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    stopped, as_json, other, streamed_stop = together([
        lambda: ask(client, PROMPTS[0], stop=[word]),
        lambda: ask(client, "Give the city and floor of the pharmacy as JSON.", max_tokens=60, response_format=fmt),
        lambda: ask(client, PROMPTS[2], max_tokens=60),
        lambda: ask(client, PROMPTS[0], stop=[word], stream=True),
    ])
    assert stopped == streamed_stop == (plain[: plain.index(word)], "stop")
    data = json.loads(as_json[0])
    assert isinstance(data["city"], str) and isinstance(data["floor"], int)
    assert other[0] and not other[0].lstrip().startswith("{")


def test_a_cancelled_stream_frees_its_sequence(server: Server) -> None:
    client = server.client()
    stream = client.chat.completions.create(model="any", messages=[{"role": "user", "content": PROMPTS[2]}],
                                            max_tokens=900, temperature=0.9, seed=3, stream=True)
    next(iter(stream))
    assert metric(server, "appliance_inference_sequences") == 1
    stream.close()
    deadline = time.monotonic() + WAIT_S
    while metric(server, "appliance_inference_sequences") != 0:
        assert time.monotonic() < deadline, "the sequence of a closed stream was not freed"
        time.sleep(0.05)
    assert ask(client, PROMPTS[0], max_tokens=5)[1] == "length"


def test_a_client_that_leaves_before_its_answer_frees_its_sequence(server: Server) -> None:
    """An answer returned whole: uvicorn does not cancel a handler whose client left, so the server
    watches for the disconnect itself (a 499 in the metrics) and cancels the sequence."""
    import socket

    from test_inference import KEY

    body = json.dumps({"model": "any", "messages": [{"role": "user", "content": PROMPTS[2]}], "max_tokens": 900,
                       "temperature": 0.9, "seed": 3, "logit_bias": {"2": -100}}).encode()  # 2: <|im_end|>
    gone = r'^appliance_inference_requests_total\{code="499",endpoint="/v1/chat/completions"\} (\S+)$'
    before = re.search(gone, httpx.get(f"{server.base}/metrics").text, re.M)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    deadline = time.monotonic() + WAIT_S
    while metric(server, "appliance_inference_sequences") != 1:
        assert time.monotonic() < deadline, "the request never started generating"
        time.sleep(0.02)
    sock.close()
    while True:
        found = re.search(gone, httpx.get(f"{server.base}/metrics").text, re.M)
        if found and float(found.group(1)) == (float(before.group(1)) if before else 0) + 1:
            break
        assert time.monotonic() < deadline, "the server did not see the client leave"
        time.sleep(0.05)
    while metric(server, "appliance_inference_sequences") != 0:
        assert time.monotonic() < deadline, "the sequence of a client that left was not freed"
        time.sleep(0.05)
    assert ask(server.client(), PROMPTS[0], max_tokens=5)[1] == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_context_overflow_is_a_400_with_token_counts(server: Server, stream: bool) -> None:
    client = server.client()
    with pytest.raises(openai.BadRequestError) as info:  # raised by create(), before any chunk
        client.chat.completions.create(model="any", messages=[{"role": "user", "content": "pharmacy " * 1100}],
                                       max_tokens=10, stream=stream)
    assert info.value.code == "context_length_exceeded"
    assert re.search(r"maximum context length is 1024 tokens\. However, your messages resulted in \d{4} tokens",
                     info.value.message), info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="any", messages=[{"role": "user", "content": PROMPTS[0]}],
                                       max_tokens=1020, stream=stream)
    assert re.search(r"you requested \d+ tokens \(\d+ in the messages, 1020 in the completion\)",
                     info.value.message), info.value.message
    assert ask(client, PROMPTS[0], max_tokens=3)[1] == "length"  # the server goes on


def _sse(server: Server, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The streamed chunks' shapes: `id` and `created` replaced by theirs, each token's text by "…",
    then runs of equal chunks made one (the two servers' text may differ: flash attention, see below)."""
    from test_inference import KEY

    shapes: list[dict[str, Any]] = []
    with httpx.stream("POST", f"{server.base}/v1/{path}", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=WAIT_S) as res:
        assert res.status_code == 200, res.read()
        lines = [line for line in res.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        chunk = json.loads(line[6:])
        chunk["id"] = re.sub(r"[0-9a-f-]{36}$", "<uuid>", chunk["id"])
        assert isinstance(chunk.pop("created"), int)
        for choice in chunk["choices"]:
            if choice.get("text") or choice.get("delta", {}).get("content"):
                choice["text" if "text" in choice else "delta"] = "…" if "text" in choice else {"content": "…"}
        if not shapes or shapes[-1] != chunk:
            shapes.append(chunk)
    return shapes


def test_streamed_chunks_are_those_of_the_serial_server(server: Server, template_dir: Path,
                                                        tmp_path: Path) -> None:
    """The batched engine makes streamed chunks itself (appliance/inference/streams.py): the chunks
    llama-cpp-python's handler gives the serial server, field for field, and the same token counts.
    (Not the same text: the batched engine decodes with flash attention, which moves this model's
    logits enough to change greedy choices after a few tokens.)"""
    clone_data_dir(template_dir, tmp_path / "data")
    serial = Server(tmp_path / "data", APPLIANCE_INFERENCE_PARALLEL="1").start()
    try:
        for path, body in [("chat/completions", {"messages": [{"role": "user", "content": PROMPTS[1]}]}),
                           ("completions", {"prompt": "The pharmacy is on the"})]:
            for extra in ({}, {"stream_options": {"include_usage": True}}):
                full = {**body, **extra, "max_tokens": 12, "temperature": 0, "stream": True}
                batched = _sse(server, path, full)
                assert batched == _sse(serial, path, full)
                assert batched[-1]["usage"]["completion_tokens"] == 12 if extra else batched[-1]["choices"][0][
                    "finish_reason"] == "length"
    finally:
        serial.stop()
