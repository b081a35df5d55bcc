"""Dataset intake through the real API: every accepted form, exact stats, content addressing."""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from samples import ALL_FORMS, ALPACA, CONVERSATIONS, EXPECTED, MESSAGES, jsonl, parquet
from sqlmodel import Session

from appliance.bootstrap import Runtime
from appliance.db.tables import Run

# Measured with the bundled model's tokenizer and chat template; test_token_counts_match_transformers
# checks these against transformers' own apply_chat_template.
TOKENS = {"min_tokens": 41, "median_tokens": 49.0, "max_tokens": 50, "total_tokens": 140}


def upload(client: TestClient, filename: str, content: bytes, **form: str):  # type: ignore[no-untyped-def]
    return client.post("/api/datasets", files={"file": (filename, content)}, data=form)


def canonical_sha() -> str:
    body = "".join(json.dumps({"messages": c}, ensure_ascii=False, separators=(",", ":")) + "\n" for c in CONVERSATIONS)
    return hashlib.sha256(body.encode()).hexdigest()


@pytest.mark.parametrize(("filename", "content", "fmt", "source_type"), ALL_FORMS, ids=[f[0] for f in ALL_FORMS])
def test_each_form_is_accepted_with_exact_stats(
    client: TestClient, runtime: Runtime, filename: str, content: bytes, fmt: str, source_type: str
) -> None:
    res = upload(client, filename, content)
    assert res.status_code == 201, res.text
    body = res.json()
    assert body["format"] == fmt
    assert body["source_type"] == source_type
    assert body["name"] == filename
    assert {k: body[k] for k in EXPECTED} == EXPECTED
    assert body["sha256"] == canonical_sha()
    assert body["id"] == f"ds_{canonical_sha()[:16]}"
    [stats] = body["token_stats"]
    assert stats["base_model_id"] == "smollm2-135m-instruct"
    assert stats["cutoff_len"] == 1024
    assert stats["over_cutoff"] == 0
    assert {k: stats[k] for k in TOKENS} == TOKENS
    stored = runtime.paths.dataset_file(body["sha256"])
    assert [json.loads(line)["messages"] for line in stored.read_text().splitlines()] == CONVERSATIONS


def test_token_counts_match_transformers(client: TestClient, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    counts = []
    for conversation in CONVERSATIONS:
        ids = hf_tokenizer.apply_chat_template(conversation, tokenize=True)
        counts.append(len(ids["input_ids"] if hasattr(ids, "keys") else ids))
    expected = {
        "min_tokens": min(counts), "median_tokens": float(statistics.median(counts)),
        "max_tokens": max(counts), "total_tokens": sum(counts),
    }
    assert expected == TOKENS
    stats = upload(client, "faq.jsonl", jsonl(ALPACA)).json()["token_stats"][0]
    assert {k: stats[k] for k in TOKENS} == expected


def test_cutoff_counts_rows_over_it(client: TestClient) -> None:
    res = upload(client, "faq.jsonl", jsonl(ALPACA), cutoff_len="48")
    stats = res.json()["token_stats"][0]
    assert (stats["cutoff_len"], stats["over_cutoff"]) == (48, 2)  # 49 and 50 tokens are over 48


def test_stats_for_another_cutoff_are_measured_and_recorded(client: TestClient) -> None:
    ds = upload(client, "faq.jsonl", jsonl(ALPACA)).json()
    res = client.get(f"/api/datasets/{ds['id']}/stats", params={"cutoff_len": 49})
    assert res.status_code == 200
    by_cutoff = {s["cutoff_len"]: s["over_cutoff"] for s in res.json()["token_stats"]}
    assert by_cutoff == {1024: 0, 49: 1}
    assert len(client.get(f"/api/datasets/{ds['id']}").json()["token_stats"]) == 2


def test_unknown_base_model_for_stats_is_refused(client: TestClient, runtime: Runtime) -> None:
    res = upload(client, "faq.jsonl", jsonl(ALPACA), base_model_id="no-such-model")
    assert res.status_code == 422
    assert "base_model_id" in res.json()["detail"]
    assert client.get("/api/datasets").json() == []
    assert list(runtime.paths.datasets.iterdir()) == []


def test_same_content_is_the_same_dataset(client: TestClient) -> None:
    first = upload(client, "faq.jsonl", jsonl(ALPACA))
    again = upload(client, "again.jsonl", jsonl(ALPACA))
    other_form = upload(client, "openai.parquet", parquet(MESSAGES))
    assert first.status_code == 201
    assert again.status_code == 200 and other_form.status_code == 200
    assert again.json()["id"] == other_form.json()["id"] == first.json()["id"]
    assert len(client.get("/api/datasets").json()) == 1


def test_list_show_preview_download(client: TestClient) -> None:
    ds = upload(client, "faq.jsonl", jsonl(ALPACA), name="Clinic FAQ").json()
    assert ds["name"] == "Clinic FAQ"
    listed = client.get("/api/datasets").json()
    assert [d["id"] for d in listed] == [ds["id"]]
    assert client.get(f"/api/datasets/{ds['id']}").json()["rows"] == 3
    preview = client.get(f"/api/datasets/{ds['id']}/preview", params={"n": 2}).json()
    assert preview["rows"] == [{"messages": c} for c in CONVERSATIONS[:2]]
    download = client.get(f"/api/datasets/{ds['id']}/download")
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == ds["sha256"]
    assert "Clinic%20FAQ.jsonl" in download.headers["content-disposition"]


def test_delete_removes_record_and_file(client: TestClient, runtime: Runtime) -> None:
    ds = upload(client, "faq.jsonl", jsonl(ALPACA)).json()
    assert client.delete(f"/api/datasets/{ds['id']}").status_code == 204
    assert client.get(f"/api/datasets/{ds['id']}").status_code == 404
    assert list(runtime.paths.datasets.iterdir()) == []
    assert client.delete(f"/api/datasets/{ds['id']}").status_code == 404


def test_delete_of_a_dataset_in_use_is_refused(client: TestClient, runtime: Runtime) -> None:
    ds = upload(client, "faq.jsonl", jsonl(ALPACA)).json()
    with Session(runtime.engine) as session:
        session.add(Run(id="run_1", dataset_id=ds["id"], base_model_id="smollm2-135m-instruct"))
        session.commit()
    res = client.delete(f"/api/datasets/{ds['id']}")
    assert res.status_code == 409
    assert "run_1" in res.json()["detail"]
    assert client.get(f"/api/datasets/{ds['id']}").status_code == 200
    assert runtime.paths.dataset_file(ds["sha256"]).exists()


def test_upload_name_never_decides_a_path(client: TestClient, runtime: Runtime, tmp_path: Path) -> None:
    res = upload(client, "../../../../tmp/evil.jsonl", jsonl(ALPACA))
    assert res.status_code == 201
    assert res.json()["name"] == "evil.jsonl"
    assert [p.name for p in runtime.paths.datasets.iterdir()] == [f"{res.json()['sha256']}.jsonl"]
    assert not Path("/tmp/evil.jsonl").exists()


@pytest.mark.parametrize("bad_id", ["..", "../secrets", "%2e%2e", "ds_1/../../x"])
def test_ids_that_look_like_paths_are_not_found(client: TestClient, bad_id: str) -> None:
    assert client.get(f"/api/datasets/{bad_id}/download").status_code == 404
