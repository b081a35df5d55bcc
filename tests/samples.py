"""The same three conversations in every accepted shape and file type, and their exact stats."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

CONVERSATIONS: list[list[dict[str, str]]] = [
    [
        {"role": "user", "content": "What are the opening hours?"},
        {"role": "assistant", "content": "We are open 8am to 6pm."},
    ],
    [
        {"role": "user", "content": "Translate to French\nGood morning"},
        {"role": "assistant", "content": "Bonjour"},
    ],
    [
        {"role": "system", "content": "You are the clinic assistant."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Who answers the phone?"},
        {"role": "assistant", "content": "The front desk."},
    ],
]
# Counted by hand: 27+23, 32+7, 29+2+22+22+15.
EXPECTED = {"rows": 3, "turns": 4, "characters": 179}

ALPACA: list[dict[str, Any]] = [
    {"instruction": "What are the opening hours?", "input": "", "output": "We are open 8am to 6pm."},
    {"instruction": "Translate to French", "input": "Good morning", "output": "Bonjour"},
    {
        "instruction": "Who answers the phone?",
        "output": "The front desk.",
        "system": "You are the clinic assistant.",
        "history": [["Hi", "Hello! How can I help?"]],
    },
]
SHAREGPT_ROLE = {"user": "human", "assistant": "gpt"}
SHAREGPT: list[dict[str, Any]] = [
    {"conversations": [{"from": SHAREGPT_ROLE[m["role"]], "value": m["content"]} for m in c if m["role"] != "system"]}
    | ({"system": c[0]["content"]} if c[0]["role"] == "system" else {})
    for c in CONVERSATIONS
]
MESSAGES: list[dict[str, Any]] = [{"messages": c} for c in CONVERSATIONS]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def json_array(rows: list[dict[str, Any]]) -> bytes:
    return json.dumps(rows, indent=2).encode()


def alpaca_csv() -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["instruction", "input", "output", "system", "history"])
    writer.writeheader()
    for r in ALPACA:
        writer.writerow({**r, "history": json.dumps(r["history"]) if "history" in r else ""})
    return out.getvalue().encode()


def parquet(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = list(dict.fromkeys(k for r in rows for k in r))  # from_pylist reads keys off the first row only
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), buf)
    return buf.getvalue()


# (filename, content, detected format, source type)
ALL_FORMS = [
    ("faq.jsonl", jsonl(ALPACA), "alpaca", "jsonl"),
    ("faq.json", json_array(ALPACA), "alpaca", "json"),
    ("faq.csv", alpaca_csv(), "alpaca", "csv"),
    ("chats.jsonl", jsonl(SHAREGPT), "sharegpt", "jsonl"),
    ("chats.json", json_array(SHAREGPT), "sharegpt", "json"),
    ("chats.parquet", parquet(SHAREGPT), "sharegpt", "parquet"),
    ("openai.jsonl", jsonl(MESSAGES), "messages", "jsonl"),
    ("openai.parquet", parquet(MESSAGES), "messages", "parquet"),
]
