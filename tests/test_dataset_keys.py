"""Every key of a dataset row is honoured or refused by name (../shared/cases 05: OpenAI's
per-message weight; tool calls, roles, images, unknown keys), and the limits on names and nesting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from samples import ALPACA, CONVERSATIONS, SHAREGPT, jsonl
from test_dataset_cases import CASES, stored_text, upload
from test_dataset_errors import assert_nothing_stored
from test_datasets import canonical_sha

from appliance.bootstrap import Runtime

# --- case 05: per-message weight ------------------------------------------------------------------


def test_case05_weight_zero_is_kept_as_context_and_shown(client: TestClient) -> None:
    res = upload(client, "weighted.jsonl", (CASES / "weighted.jsonl").read_bytes())
    assert res.status_code == 201, res.text
    rows = client.get(f"/api/datasets/{res.json()['id']}/preview").json()["rows"]
    first = rows[0]["messages"]
    assert first[2] == {"role": "assistant", "content": "About 40 litres of any coolant.", "weight": 0}
    assert first[4] == {"role": "assistant", "content": "Sorry: it takes 12 litres of CX-7 coolant."}  # 1: default
    assert "weight" not in rows[1]["messages"][1]


def test_case05_weight_zero_turn_gets_no_label(client: TestClient, runtime: Runtime, template_dir: Path) -> None:
    from appliance.models.chat import ChatTokenizer
    from appliance.models.registry import BUNDLED_ID
    from appliance.trainer.data import IGNORE
    from appliance.trainer.rows import encode

    res = upload(client, "weighted.jsonl", (CASES / "weighted.jsonl").read_bytes())
    messages = json.loads(stored_text(runtime, res.json()).splitlines()[0])["messages"]
    tok = ChatTokenizer(template_dir / "models" / BUNDLED_ID / "hf")
    example = encode(tok, messages, cutoff_len=512)
    assert example is not None
    trained = tok.tokenizer.decode([t for t in example.labels if t != IGNORE])
    assert "12 litres of CX-7" in trained
    assert "40 litres" not in trained
    every_turn = encode(tok, [{k: v for k, v in m.items() if k != "weight"} for m in messages], cutoff_len=512)
    assert every_turn is not None and "40 litres" in tok.tokenizer.decode(
        [t for t in every_turn.labels if t != IGNORE])
    assert example.input_ids == every_turn.input_ids  # the turn is still in the context


def test_case05_fractional_weight_is_refused(client: TestClient, runtime: Runtime) -> None:
    res = upload(client, "weight_bad.jsonl", (CASES / "weight_bad.jsonl").read_bytes())
    assert res.status_code == 422, res.text
    [error] = res.json()["errors"]
    assert (error["line"], error["field"]) == (1, "messages[1].weight")
    assert "0 or 1" in error["message"]
    assert_nothing_stored(client, runtime)


def test_explicit_weight_one_is_the_same_dataset_as_none(client: TestClient) -> None:
    weighted = [{"messages": [{**m, "weight": 1} if m["role"] == "assistant" else m for m in c]}
                for c in CONVERSATIONS]
    res = upload(client, "w.jsonl", jsonl(weighted))
    assert res.status_code == 201, res.text
    assert res.json()["sha256"] == canonical_sha()


def test_developer_role_and_text_parts_are_honoured(client: TestClient, runtime: Runtime) -> None:
    row = {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                        {"role": "user", "content": [{"type": "text", "text": "Hours? "},
                                                     {"type": "text", "text": "Today."}]},
                        {"role": "assistant", "content": "8 to 6."}]}
    res = upload(client, "d.jsonl", jsonl([row]))
    assert res.status_code == 201, res.text
    assert json.loads(stored_text(runtime, res.json()))["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hours? Today."},
        {"role": "assistant", "content": "8 to 6."}]


def _msgs(*extra: dict[str, Any], **row_keys: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "Hours?"}, {"role": "assistant", "content": "8 to 6."},
                         *extra], **row_keys}


TOOL_CALL = {"id": "c1", "type": "function", "function": {"name": "hours", "arguments": "{}"}}
# (id, row, field, substrings of the message)
REFUSED = [
    ("weight on a user message", {"messages": [{"role": "user", "content": "a", "weight": 0},
                                               {"role": "assistant", "content": "b"}]},
     "messages[0].weight", ["only allowed on assistant"]),
    ("weight as a string", {"messages": [{"role": "user", "content": "a"},
                                         {"role": "assistant", "content": "b", "weight": "0"}]},
     "messages[1].weight", ["0 or 1"]),
    ("every response weight 0", {"messages": [{"role": "user", "content": "a"},
                                              {"role": "assistant", "content": "b", "weight": 0}]},
     None, ["nothing in this row would be trained"]),
    ("tool calls", {"messages": [{"role": "user", "content": "a"},
                                 {"role": "assistant", "content": "b", "tool_calls": [TOOL_CALL]}]},
     "messages[1].tool_calls", ["not supported", "tool and function calling", "'role', 'content', 'name', 'weight'"]),
    ("tool role", _msgs({"role": "tool", "content": "{}", "tool_call_id": "c1"}),
     "messages[2].tool_call_id", ["not supported"]),
    ("tool role without id", _msgs({"role": "tool", "content": "{}"}), "messages[2].role",
     ["unsupported role 'tool'", "supported roles: system, user, assistant"]),
    ("unknown role", _msgs({"role": "narrator", "content": "x"}), "messages[2].role",
     ["unsupported role 'narrator'", "supported roles: system, user, assistant"]),
    ("tools on the row", _msgs(tools=[{"type": "function", "function": {"name": "hours"}}]), "tools",
     ["'tools' is not supported", "accepted keys of a messages row: ['messages']"]),
    ("function_call", {"messages": [{"role": "user", "content": "a"},
                                    {"role": "assistant", "content": "b", "function_call": {"name": "f"}}]},
     "messages[1].function_call", ["not supported"]),
    ("image part", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]},
        {"role": "assistant", "content": "A part."}]}, "messages[0].content[1]", ["images", "not supported"]),
    ("extra key on a text part", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": "Hello."}]}, "messages[0].content[0].cache_control", ["unknown key"]),
    ("content null", {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "b"}]},
     "messages[0].content", ["null"]),
    ("message without role", {"messages": [{"content": "a"}, {"role": "assistant", "content": "b"}]},
     "messages[0]", ["'role'"]),
    ("unknown row key", _msgs(id="row-1"), "id", ["unknown key 'id'", "accepted keys"]),
    ("unknown alpaca key", {**ALPACA[0], "category": "hours"}, "category",
     ["unknown key 'category'", "['instruction', 'input', 'output', 'system', 'history']"]),
    ("sharegpt tools", {**SHAREGPT[0], "tools": "[]x"}, "tools", ["not supported"]),
    ("sharegpt observation", {"conversations": [{"from": "human", "value": "a"}, {"from": "observation",
                                                                                  "value": "b"}]},
     "conversations[1].from", ["unsupported role 'observation'", "tool and function calling"]),
    ("sharegpt extra turn key", {"conversations": [{"from": "human", "value": "a", "loss": False},
                                                   {"from": "gpt", "value": "b"}]},
     "conversations[0].loss", ["unknown key 'loss'"]),
]


@pytest.mark.parametrize(("row", "field", "needles"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_every_key_is_honoured_or_refused_by_name(
    client: TestClient, runtime: Runtime, row: dict[str, Any], field: str | None, needles: list[str]
) -> None:
    res = upload(client, "rows.jsonl", jsonl([row]))
    assert res.status_code == 422, res.text
    [error] = res.json()["errors"]
    assert (error["line"], error["field"]) == (1, field), error
    for needle in needles:
        assert needle in error["message"], (needle, error["message"])
    assert_nothing_stored(client, runtime)


def test_an_extra_csv_column_is_refused_by_name(client: TestClient, runtime: Runtime) -> None:
    res = upload(client, "faq.csv", b"instruction,output,notes\nHours?,8 to 6,check\n")
    assert res.status_code == 422, res.text
    assert res.json()["errors"][0]["field"] == "notes"
    blank_column = upload(client, "faq.csv", b"instruction,output,notes\nHours?,8 to 6,\n")
    assert blank_column.status_code == 201, blank_column.text


# --- names and nesting ------------------------------------------------------------------------------


def test_a_too_long_name_is_refused_naming_the_field(client: TestClient, runtime: Runtime) -> None:
    res = upload(client, "faq.jsonl", jsonl(ALPACA), name="x" * 100_000)
    assert res.status_code == 422, res.text
    assert res.json()["errors"][0]["field"] == "name"
    assert "at most 200" in res.json()["detail"]
    long_file = upload(client, "f" * 300 + ".jsonl", jsonl(ALPACA))
    assert long_file.status_code == 422 and long_file.json()["errors"][0]["field"] == "file"
    assert_nothing_stored(client, runtime)
    assert upload(client, "faq.jsonl", jsonl(ALPACA), name="n" * 200).status_code == 201


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("form", ["jsonl", "json", "csv"])
def test_json_nested_a_thousand_deep_is_a_clean_422(client: TestClient, runtime: Runtime, form: str) -> None:
    deep = nested(5000)
    content = {
        "jsonl": f'{{"messages": {deep}}}\n',
        "json": f"[{deep}]",
        "csv": 'messages\n"' + deep + '"\n',
    }[form]
    res = upload(client, f"deep.{form}", content.encode())
    assert res.status_code == 422, res.text
    assert "nested too deeply" in res.json()["detail"]
    assert_nothing_stored(client, runtime)


def test_cli_names_the_refused_key(data_dir: Path, tmp_path: Path) -> None:
    from test_cli import appliance

    file = tmp_path / "weight_bad.jsonl"
    file.write_bytes((CASES / "weight_bad.jsonl").read_bytes())
    res = appliance(data_dir, "datasets", "add", str(file))
    assert res.returncode != 0
    assert "messages[1].weight" in res.stderr and "0 or 1" in res.stderr
    assert res.stdout == ""
