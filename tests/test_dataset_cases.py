"""Real users' dataset files (../shared/cases 01, 02) and the other faces of the same faults:
encoding noise (byte-order marks anywhere, CRLF) normalized, blank optional fields absent, in every
shape and file type. Keys (case 05) are in test_dataset_keys.py."""

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
