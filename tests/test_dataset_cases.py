"""Real users' dataset files (../shared/cases 01, 02, 05) and the other faces of the same faults:
encoding noise normalized, blank optional fields absent, every key honoured or refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from samples import ALPACA, CONVERSATIONS, MESSAGES, SHAREGPT, alpaca_csv, json_array, jsonl, parquet
from test_dataset_errors import assert_nothing_stored
from test_datasets import canonical_sha

from appliance.bootstrap import Runtime

CASES = Path(__file__).parent / "cases"


def upload(client: TestClient, filename: str, content: bytes, **form: str) -> Any:
    return client.post("/api/datasets", files={"file": (filename, content)}, data=form)


def stored_text(runtime: Runtime, body: dict[str, Any]) -> str:
    return runtime.paths.dataset_file(body["sha256"]).read_text(encoding="utf-8")


def crlf_with_boms(content: bytes) -> bytes:
    """Windows line ends, and a byte-order mark at the start and before every other line: what
    `cat a.jsonl b.jsonl` of files saved by Windows tools looks like."""
    lines = content.decode().replace("\r\n", "\n").split("\n")
    return "\r\n".join(("\ufeff" + line) if i % 2 == 0 and line else line for i, line in enumerate(lines)).encode()


# --- case 01: byte-order marks and CRLF ------------------------------------------------------------


def test_case01_bom_mid_file_and_crlf_are_the_clean_dataset(client: TestClient, runtime: Runtime) -> None:
    noisy = upload(client, "faq_bom.jsonl", (CASES / "faq_bom.jsonl").read_bytes())
    assert noisy.status_code == 201, noisy.text
    text = stored_text(runtime, noisy.json())
    assert "\ufeff" not in text and "\r" not in text
    clean = upload(client, "faq_clean.jsonl", (CASES / "faq_clean.jsonl").read_bytes())
    assert clean.status_code == 200, clean.text
    assert clean.json()["id"] == noisy.json()["id"]
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows[1]["messages"][1] == {"role": "user", "content": "Where is the serial number of the Vega mill?",
                                      "name": "operator"}


WINDOWS_FORMS = [
    ("alpaca.jsonl", crlf_with_boms(jsonl(ALPACA))),
    ("sharegpt.json", b"\xef\xbb\xbf" + json_array(SHAREGPT).replace(b"\n", b"\r\n")),
    ("alpaca.csv", b"\xef\xbb\xbf" + alpaca_csv()),  # csv's writer already ends rows with CRLF
    ("messages.jsonl", crlf_with_boms(jsonl(MESSAGES))),
    # CRLF and BOMs inside the values themselves (JSON escapes; a Parquet file exported from Windows text)
    ("escaped.jsonl", jsonl([{"messages": [{**m, "content": "\ufeff" + m["content"].replace("\n", "\r\n")}
                                           for m in c]} for c in CONVERSATIONS])),
    ("values.parquet", parquet([{"messages": [{**m, "content": m["content"].replace("\n", "\r\n") + "\ufeff"}
                                              for m in c]} for c in CONVERSATIONS])),
]


@pytest.mark.parametrize(("filename", "content"), WINDOWS_FORMS, ids=[f[0] for f in WINDOWS_FORMS])
def test_encoding_noise_is_normalized_in_every_file_type(
    client: TestClient, runtime: Runtime, filename: str, content: bytes
) -> None:
    res = upload(client, filename, content)
    assert res.status_code == 201, res.text
    assert res.json()["sha256"] == canonical_sha()
    text = stored_text(runtime, res.json())
    assert "\ufeff" not in text and "\r" not in text


def test_two_csv_files_joined_are_refused_saying_so(client: TestClient, runtime: Runtime) -> None:
    one = b"\xef\xbb\xbfinstruction,output\r\nHours?,8 to 6\r\n"
    two = b"\xef\xbb\xbfinstruction,output\r\nWhere?,Main St\r\n"
    res = upload(client, "joined.csv", one + two)
    assert res.status_code == 422, res.text
    body = res.json()
    assert "two files were probably joined" in body["detail"]
    assert {(e["line"], e["message"].split(":")[0]) for e in body["errors"]} >= {
        (3, "this row repeats the header row")
    }
    assert_nothing_stored(client, runtime)


def test_a_refused_file_with_a_mid_file_bom_says_two_files_were_joined(client: TestClient, runtime: Runtime) -> None:
    content = jsonl(ALPACA[:1]) + b"\xef\xbb\xbf" + jsonl([{"instruction": "Hours?", "output": ""}])
    body = upload(client, "joined.jsonl", content).json()
    assert body["errors"][0]["line"] == 2
    assert "two files were probably joined" in body["errors"][0]["message"]
    assert {"line": 2, "field": "output", "message": "empty assistant response"} in body["errors"]
    assert_nothing_stored(client, runtime)


def test_two_json_arrays_joined_are_refused_saying_so(client: TestClient, runtime: Runtime) -> None:
    one = b"\xef\xbb\xbf" + json_array(ALPACA[:1]) + b"\r\n"
    res = upload(client, "joined.json", one + b"\xef\xbb\xbf" + json_array(ALPACA[1:2]))
    assert res.status_code == 422, res.text
    assert "two files were probably joined" in res.json()["detail"]
    assert any("extra data after the array" in e["message"] for e in res.json()["errors"])
    assert_nothing_stored(client, runtime)


# --- case 02: blank optional fields -----------------------------------------------------------------


def test_case02_excel_csv_blank_cells_are_absent(client: TestClient, runtime: Runtime) -> None:
    res = upload(client, "faq_excel.csv", (CASES / "faq_excel.csv").read_bytes())
    assert res.status_code == 201, res.text
    text = stored_text(runtime, res.json())
    assert "\ufeff" not in text and "\r" not in text
    rows = [json.loads(line)["messages"] for line in text.splitlines()]
    assert rows[0][1]["content"] == ("Drain the sump through the rear valve.\nFlush with 5 litres of clean water.\n"
                                     "Refill with 12 litres of CX-7 coolant.")
    assert rows[2][0]["content"] == "Translate the error code for me.\nE42"
    assert rows[4] == [{"role": "user", "content": "Which grease goes on the Helix conveyor rails?"},
                       {"role": "assistant", "content": "LG-2 grease."}]
    assert all(m["role"] != "system" for row in rows for m in row)


def test_case02_blank_output_is_still_refused_at_its_line(client: TestClient, runtime: Runtime) -> None:
    res = upload(client, "faq_excel_blank_output.csv", (CASES / "faq_excel_blank_output.csv").read_bytes())
    assert res.status_code == 422, res.text
    assert res.json()["errors"] == [{"line": 7, "field": "output", "message": "empty assistant response"}]
    assert_nothing_stored(client, runtime)


BLANK_ALPACA = [{**ALPACA[0], "input": "   ", "system": "\t", "history": []},
                {**ALPACA[1], "system": "", "history": None},
                {**ALPACA[2], "input": " \r\n "}]
BLANK_SHAREGPT = [{**r, "system": r.get("system") or "  "} for r in SHAREGPT]
BLANK_MESSAGES = [{"messages": ([] if c[0]["role"] == "system" else [{"role": "system", "content": " "}])
                   + [{**m, "name": "  "} for m in c]} for c in CONVERSATIONS]


def blank_csv() -> bytes:
    return alpaca_csv().replace(b"We are open 8am to 6pm.,,", b"We are open 8am to 6pm.,\"  \",\" \"").replace(
        b"Bonjour,,", b"Bonjour,   ,")


BLANK_FORMS = [
    ("alpaca.jsonl", jsonl(BLANK_ALPACA)),
    ("alpaca.json", json_array(BLANK_ALPACA)),
    ("alpaca.csv", blank_csv()),
    ("alpaca.parquet", parquet(BLANK_ALPACA)),
    ("sharegpt.jsonl", jsonl(BLANK_SHAREGPT)),
    ("sharegpt.parquet", parquet(BLANK_SHAREGPT)),
    ("messages.jsonl", jsonl(BLANK_MESSAGES)),
    ("messages.json", json_array(BLANK_MESSAGES)),
]


@pytest.mark.parametrize(("filename", "content"), BLANK_FORMS, ids=[f[0] for f in BLANK_FORMS])
def test_blank_optional_fields_are_absent_in_every_format(
    client: TestClient, runtime: Runtime, filename: str, content: bytes
) -> None:
    res = upload(client, filename, content)
    assert res.status_code == 201, res.text
    rows = [json.loads(line)["messages"] for line in stored_text(runtime, res.json()).splitlines()]
    assert rows == CONVERSATIONS
    assert res.json()["sha256"] == canonical_sha()


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
    from appliance.trainer.data import IGNORE, encode

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
