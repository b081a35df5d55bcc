"""Every kind of bad upload: a clear 422/413 naming file, line and field, and nothing left behind."""

from __future__ import annotations

import json
import random

import pytest
from fastapi.testclient import TestClient
from samples import ALPACA, MESSAGES, jsonl
from sqlmodel import Session, select

from appliance.bootstrap import Runtime
from appliance.db.tables import Event


def lines(*rows: object) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def junk() -> bytes:
    rng = random.Random(7)
    return bytes(rng.randrange(256) for _ in range(4096))


GOOD = ALPACA[0]
# (id, filename, content, form fields, status, [substrings of detail], first error as (line, field) or None)
CASES = [
    ("truncated line", "a.jsonl", lines(GOOD, '{"instruction": "Hours?", "outp'), {}, 422,
     ["a.jsonl", "line 2", "invalid JSON"], (2, None)),
    ("invalid utf-8", "a.jsonl", lines(GOOD) + b'{"instruction": "caf\xe9", "output": "x"}\n', {}, 422,
     ["a.jsonl", "line 2", "invalid UTF-8"], (2, None)),
    ("wrong keys", "a.jsonl", lines({"question": "Hours?", "answer": "8 to 6"}), {}, 422,
     ["line 1", "unrecognized row with keys ['answer', 'question']"], (1, None)),
    ("empty file", "a.jsonl", b"", {}, 422, ["a.jsonl", "file is empty"], (None, None)),
    ("whitespace only", "a.jsonl", b"\n  \n", {}, 422, ["file is empty"], (None, None)),
    ("roles out of order", "a.jsonl",
     lines({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                         {"role": "assistant", "content": "c"}]}), {}, 422,
     ["line 1", "messages[1].role", "roles out of order: expected assistant, got user"], (1, "messages[1].role")),
    ("starts with assistant", "a.jsonl",
     lines({"messages": [{"role": "assistant", "content": "hi"}]}), {}, 422,
     ["line 1", "messages[0].role", "expected user"], (1, "messages[0].role")),
    ("ends with user", "a.jsonl",
     lines({"messages": [{"role": "user", "content": "hi"}]}), {}, 422,
     ["line 1", "must end with an assistant response"], (1, None)),
    ("empty response (messages)", "a.jsonl",
     lines(GOOD, {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]}),
     {"format": "messages"}, 422, ["line 1", "does not have the messages shape"], (1, None)),
    ("empty response (alpaca)", "a.jsonl", lines(GOOD, {"instruction": "Hours?", "output": ""}), {}, 422,
     ["line 2", "field output", "empty assistant response"], (2, "output")),
    ("empty response in messages", "m.jsonl",
     lines({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]}), {}, 422,
     ["line 1", "messages[1].content", "empty assistant response"], (1, "messages[1].content")),
    ("binary junk", "model.bin", junk(), {}, 422, ["model.bin", "line"], None),
    ("mixed shapes", "a.jsonl", lines(GOOD, MESSAGES[0]), {}, 422,
     ["line 2", "row is messages-shaped but the file is alpaca (from line 1)"], (2, None)),
    ("csv missing columns", "a.csv", b"question,answer\nHours?,8 to 6\n", {}, 422,
     ["a.csv", "line 1", "CSV header is missing column(s) ['instruction', 'output']"], (1, None)),
    ("csv ragged row", "a.csv", b"instruction,output\nHours?,8 to 6\nWhere?,Main St,extra\n", {}, 422,
     ["line 3", "expected 2 fields"], (3, None)),
    ("json array not closed", "a.json", b'[\n  {"instruction": "a", "output": "b"},\n', {}, 422,
     ["a.json", "invalid JSON"], None),
    ("json array element not an object", "a.json", b'[\n  {"instruction": "a", "output": "b"},\n  42\n]', {},
     422, ["line 3", "expected an object, got int"], (3, None)),
    ("not a known file type", "notes.txt", b"just some notes\nnothing else\n", {}, 422,
     ["notes.txt", "unrecognized file"], (1, None)),
    ("corrupt parquet", "a.parquet", b"PAR1" + b"\x01" * 64, {}, 422, ["a.parquet", "unreadable Parquet"],
     (None, None)),
    ("unsupported sharegpt role", "s.jsonl",
     lines({"conversations": [{"from": "function_call", "value": "x"}, {"from": "gpt", "value": "y"}]}), {}, 422,
     ["conversations[0].from", "unsupported role 'function_call'"], (1, "conversations[0].from")),
    ("named format does not match", "a.jsonl", jsonl(ALPACA), {"format": "sharegpt"}, 422,
     ["line 1", "does not have the sharegpt shape"], (1, None)),
    ("unknown format", "a.jsonl", jsonl(ALPACA), {"format": "llama"}, 422, ["format"], None),
    ("no rows", "a.json", b"[]", {}, 422, ["a.json", "no rows"], (None, None)),
    ("oversized", "big.jsonl", lines(*([GOOD] * 20000)), {}, 413, ["limit"], None),
]


def assert_nothing_stored(client: TestClient, runtime: Runtime) -> None:
    assert client.get("/api/datasets").json() == []
    assert list(runtime.paths.datasets.iterdir()) == []
    assert list(runtime.paths.tmp.iterdir()) == []
    with Session(runtime.engine) as session:
        assert list(session.exec(select(Event).where(Event.kind == "dataset.added"))) == []


@pytest.mark.parametrize(
    ("filename", "content", "form", "status", "needles", "first"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_upload_is_refused_and_leaves_nothing(
    client: TestClient,
    runtime: Runtime,
    filename: str,
    content: bytes,
    form: dict[str, str],
    status: int,
    needles: list[str],
    first: tuple[int | None, str | None] | None,
) -> None:
    res = client.post("/api/datasets", files={"file": (filename, content)}, data=form)
    assert res.status_code == status, res.text
    body = res.json()
    for needle in needles:
        assert needle in body["detail"], (needle, body["detail"])
    if first is not None:
        assert body["file"] == filename
        assert (body["errors"][0]["line"], body["errors"][0]["field"]) == first
    assert_nothing_stored(client, runtime)


def test_at_most_twenty_problems_are_listed_and_all_are_counted(client: TestClient, runtime: Runtime) -> None:
    content = lines(*[{"instruction": f"q{i}", "output": ""} for i in range(30)])
    body = client.post("/api/datasets", files={"file": ("a.jsonl", content)}).json()
    assert len(body["errors"]) == 20
    assert body["error_count"] == 30
    assert [e["line"] for e in body["errors"]] == list(range(1, 21))
    assert "(and 27 more)" in body["detail"]
    assert_nothing_stored(client, runtime)


def test_parquet_problems_name_the_row(client: TestClient, runtime: Runtime) -> None:
    from samples import parquet

    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": ""}]
    body = client.post("/api/datasets", files={"file": ("a.parquet", parquet(rows))}).json()
    assert body["errors"][0] == {"row": 2, "field": "output", "message": "empty assistant response"}
    assert "row 2" in body["detail"]
    assert_nothing_stored(client, runtime)


def test_a_bad_upload_leaves_earlier_datasets_working(client: TestClient) -> None:
    good = client.post("/api/datasets", files={"file": ("faq.jsonl", jsonl(ALPACA))}).json()
    bad = client.post("/api/datasets", files={"file": ("bad.jsonl", b'{"instruction": "x"')})
    assert bad.status_code == 422
    assert [d["id"] for d in client.get("/api/datasets").json()] == [good["id"]]
    assert client.get(f"/api/datasets/{good['id']}/download").status_code == 200
