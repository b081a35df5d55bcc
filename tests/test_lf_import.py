"""Importing a LLaMA-Factory data folder (dataset_info.json and its files): real files in tmp_path,
real SQLite, through the API (a zip or tar upload), the CLI and the service function."""

from __future__ import annotations

import csv
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from samples import ALPACA, CONVERSATIONS, jsonl
from sqlmodel import Session, select

from appliance.bootstrap import Runtime
from appliance.datasets.lf_import import import_folder, sample
from appliance.db.tables import Dataset, Event
from appliance.errors import InvalidInputError

# The sample conversations with LF's own column and tag names (an OpenAI-style file of a site).
CUSTOM_SHAREGPT = [
    {"dialog": [{"speaker": "customer", "text": m["content"]} if m["role"] == "user" else
                {"speaker": "agent", "text": m["content"]} if m["role"] == "assistant" else
                {"speaker": "policy", "text": m["content"]} for m in c]}
    for c in CONVERSATIONS
]
RENAMED_ALPACA = [{"q": r["instruction"], "ctx": r.get("input", ""), "a": r["output"],
                   **({"sys": r["system"], "turns": r["history"]} if "system" in r else {})} for r in ALPACA]
INFO: dict[str, Any] = {
    "faq_alpaca": {"file_name": "faq.json", "columns": {"system": "system", "history": "history"}},
    "faq_renamed": {"file_name": "renamed.jsonl", "formatting": "alpaca",
                    "columns": {"prompt": "q", "query": "ctx", "response": "a", "system": "sys", "history": "turns"}},
    "support_chats": {"file_name": "chats", "formatting": "sharegpt", "split": "train",
                      "columns": {"messages": "dialog"},
                      "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "customer",
                               "assistant_tag": "agent", "system_tag": "policy"}},
}


def write_folder(root: Path, info: dict[str, Any] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_info.json").write_text(json.dumps(INFO if info is None else info, indent=2))
    (root / "faq.json").write_text(json.dumps(ALPACA))
    (root / "renamed.jsonl").write_bytes(jsonl(RENAMED_ALPACA))
    (root / "chats").mkdir(exist_ok=True)  # file_name may name a folder: its files, in name order
    (root / "chats" / "part-1.jsonl").write_bytes(jsonl(CUSTOM_SHAREGPT[:2]))
    (root / "chats" / "part-2.jsonl").write_bytes(jsonl(CUSTOM_SHAREGPT[2:]))
    return root


def zipped(root: Path, top: str = "data") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, f"{top}/{p.relative_to(root)}")
    return out.getvalue()


def stored(runtime: Runtime, ds: dict[str, Any]) -> list[list[dict[str, Any]]]:
    text = runtime.paths.dataset_file(ds["sha256"]).read_text()
    return [json.loads(line)["messages"] for line in text.splitlines()]


def test_zip_of_a_data_folder_becomes_one_dataset_per_entry(client: TestClient, runtime: Runtime,
                                                            tmp_path: Path) -> None:
    res = client.post("/api/datasets/import-lf", files={"file": ("data.zip", zipped(write_folder(tmp_path / "d")))})
    assert res.status_code == 201, res.text
    body = res.json()
    assert [(i["lf_name"], i["created"]) for i in body] == [
        ("faq_alpaca", True), ("faq_renamed", False), ("support_chats", False)]
    # The same conversations, whatever the columns and tags: the same content is the same dataset.
    assert len({i["dataset"]["id"] for i in body}) == 1
    ds = body[0]["dataset"]
    assert (ds["name"], ds["format"], ds["source_type"], ds["rows"]) == ("faq_alpaca", "alpaca", "json", 3)
    assert ds["token_stats"][0]["base_model_id"] == "smollm2-135m-instruct"
    assert stored(runtime, ds) == CONVERSATIONS
    again = client.post("/api/datasets/import-lf", files={"file": ("data.zip", zipped(tmp_path / "d"))})
    assert again.status_code == 200 and [i["created"] for i in again.json()] == [False] * 3


def test_custom_columns_and_tags_are_read_as_mapped(runtime: Runtime, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d")
    (root / "faq.json").write_text(json.dumps(ALPACA[:2]))  # a different content, so three datasets
    (root / "renamed.jsonl").write_bytes(jsonl(RENAMED_ALPACA[2:]))
    imported = import_folder(engine=runtime.engine, paths=runtime.paths, settings=runtime.settings, folder=root,
                             names=["support_chats,faq_renamed", "faq_alpaca"])
    assert [(i.lf_name, i.created, i.dataset.format, i.dataset.rows) for i in imported] == [
        ("support_chats", True, "sharegpt", 3), ("faq_renamed", True, "alpaca", 1), ("faq_alpaca", True, "alpaca", 2)]
    chats, renamed, _ = (stored(runtime, i.dataset.model_dump()) for i in imported)
    assert chats == CONVERSATIONS  # part-1 then part-2; the "policy" tag is the system prompt
    assert renamed == [CONVERSATIONS[2]]  # sys -> system, turns -> history
    assert imported[0].dataset.source_filename == "chats" and imported[0].dataset.source_type == "jsonl"
    with Session(runtime.engine) as session:
        messages = [e.message for e in session.exec(select(Event).where(Event.kind == "dataset.added"))]
    assert any("from LLaMA-Factory dataset_info.json entry 'support_chats'" in m for m in messages)


def test_csv_with_its_own_column_names(runtime: Runtime, tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["question", "answer"])
    writer.writerow(["Where is the lab?", "Floor 2."])
    (root / "faq.csv").write_text(out.getvalue())
    (root / "dataset_info.json").write_text(json.dumps(
        {"lab": {"file_name": "faq.csv", "columns": {"prompt": "question", "response": "answer"}}}))
    [lab] = import_folder(engine=runtime.engine, paths=runtime.paths, settings=runtime.settings, folder=root)
    assert (lab.dataset.source_type, lab.dataset.rows) == ("csv", 1)
    assert stored(runtime, lab.dataset.model_dump()) == [
        [{"role": "user", "content": "Where is the lab?"}, {"role": "assistant", "content": "Floor 2."}]]


def refused(runtime: Runtime, root: Path, names: list[str] | None = None) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        import_folder(engine=runtime.engine, paths=runtime.paths, settings=runtime.settings, folder=root, names=names)
    with Session(runtime.engine) as session:
        assert session.exec(select(Dataset)).all() == []  # all or nothing
    assert list(runtime.paths.datasets.iterdir()) == []
    return info.value


def test_every_refused_key_is_named_with_its_dataset(runtime: Runtime, tmp_path: Path) -> None:
    info = {**INFO,
            "remote": {"hf_hub_url": "tatsu-lab/alpaca"},
            "prefs": {"file_name": "faq.json", "ranking": True, "columns": {"chosen": "c", "rejected": "r"}},
            "calls": {"file_name": "faq.json", "formatting": "sharegpt", "columns": {"tools": "tools"}},
            "odd": {"file_name": "faq.json", "load_from": "file", "split": "test[:10]", "subset": "en",
                    "tags": {"user_tag": "u"}},
            "shared_tags": {"file_name": "chats", "formatting": "sharegpt",
                            "tags": {"user_tag": "x", "assistant_tag": "x", "colour": "red"}},
            "escape": {"file_name": "../secret.json"}, "dot": {"file_name": "."}, "n" * 201: {"file_name": "faq.json"}}
    err = refused(runtime, write_folder(tmp_path / "d", info))
    assert err.source == "dataset_info.json"
    by_field = {p.field: p.message for p in err.problems}
    assert set(by_field) == {
        "remote.hf_hub_url", "prefs.ranking", "prefs.columns.chosen", "prefs.columns.rejected", "calls.columns.tools",
        "odd.load_from", "odd.split", "odd.subset", "odd.tags", "shared_tags.tags.assistant_tag",
        "shared_tags.tags.colour", "escape.file_name", "dot.file_name", "n" * 200}
    assert "offline appliance cannot" in by_field["remote.hf_hub_url"]
    assert "preference data" in by_field["prefs.ranking"]
    assert "tool and function calling cannot be trained" in by_field["calls.columns.tools"]
    assert "unknown key 'load_from'" in by_field["odd.load_from"]
    assert "'test[:10]'" in by_field["odd.split"] and "alpaca" in by_field["odd.tags"]
    assert "outside the imported folder" in by_field["escape.file_name"] and "1 to 200" in by_field["n" * 200]
    # Selecting only good entries imports them: the refused ones are not read.
    ok = import_folder(engine=runtime.engine, paths=runtime.paths, settings=runtime.settings,
                       folder=tmp_path / "d", names=["faq_alpaca"])
    assert [i.lf_name for i in ok] == ["faq_alpaca"]


def test_a_bad_row_names_the_file_line_and_its_own_field(runtime: Runtime, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d")
    bad = [*CUSTOM_SHAREGPT[:2], {"dialog": [{"speaker": "customer", "text": "hi"}, {"speaker": "bot", "text": "x"}]}]
    (root / "chats" / "part-2.jsonl").write_bytes(jsonl(bad))
    err = refused(runtime, root)  # faq_alpaca and faq_renamed were fine: nothing of them is kept either
    assert err.source == "chats/part-2.jsonl (dataset 'support_chats')"
    [problem] = err.problems
    assert (problem.line, problem.field) == (3, "dialog[1].speaker")
    assert "unknown role 'bot'" in problem.message and "assistant 'agent'" in problem.message


@pytest.mark.parametrize(("row", "field", "words"), [
    ({"q": "a", "a": "b", "id": 7}, "id", "column 'id' is not read"),
    ({"q": "a", "a": ""}, "a", "empty assistant response"),
    ({"q": "a", "a": "b", "turns": [["x"]]}, "turns[0]", "[user, assistant] pair"),
], ids=["unmapped-column", "empty-response", "bad-history"])
def test_alpaca_row_problems_use_the_mapped_names(runtime: Runtime, tmp_path: Path, row: dict[str, Any],
                                                  field: str, words: str) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "x.jsonl").write_bytes(jsonl([row]))
    (root / "dataset_info.json").write_text(json.dumps(
        {"x": {"file_name": "x.jsonl", "columns": {"prompt": "q", "response": "a", "history": "turns"}}}))
    [problem] = refused(runtime, root).problems
    assert problem.field == field and words in problem.message


def test_tool_roles_and_missing_files_are_refused(runtime: Runtime, tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    call = {"conversations": [{"from": "human", "value": "weather?"}, {"from": "function_call", "value": "{}"}]}
    (root / "calls.jsonl").write_bytes(jsonl([call]))
    (root / "dataset_info.json").write_text(json.dumps({
        "calls": {"file_name": "calls.jsonl", "formatting": "sharegpt"}, "gone": {"file_name": "gone.json"}}))
    [problem] = refused(runtime, root, ["calls"]).problems
    assert problem.field == "conversations[1].from" and "function_tag role" in problem.message
    [missing] = refused(runtime, root, ["gone"]).problems
    assert (missing.field, missing.message) == ("gone.file_name", "'gone.json' is not in the folder")
    [unknown] = refused(runtime, root, ["nope"]).problems
    assert unknown.field == "nope" and "no dataset 'nope'" in unknown.message
    # Every entry that names no usable file is told at once, not the first alone.
    (root / "dataset_info.json").write_text(json.dumps({
        "gone": {"file_name": "gone.json"}, "empty": {"file_name": "sub"},
        "calls": {"file_name": "calls.jsonl", "formatting": "sharegpt"}}))
    (root / "sub").mkdir()
    both = refused(runtime, root, None).problems
    assert [p.field for p in both] == ["gone.file_name", "empty.file_name"], both


def test_num_samples_and_file_sha1_are_honoured(runtime: Runtime, tmp_path: Path) -> None:
    import hashlib

    root = write_folder(tmp_path / "d")
    sha1 = hashlib.sha1((root / "faq.json").read_bytes()).hexdigest()
    info = {"two": {**INFO["faq_alpaca"], "num_samples": 2, "file_sha1": sha1},
            "five": {**INFO["faq_alpaca"], "num_samples": 5}}
    (root / "dataset_info.json").write_text(json.dumps(info))
    two, five = import_folder(engine=runtime.engine, paths=runtime.paths, settings=runtime.settings, folder=root)
    assert (two.dataset.rows, five.dataset.rows) == (2, 5)
    assert stored(runtime, five.dataset.model_dump())[:3] == sample(CONVERSATIONS, 3)  # every row once, then repeats
    assert sorted(map(str, sample(CONVERSATIONS, 3))) == sorted(map(str, CONVERSATIONS))
    (root / "dataset_info.json").write_text(json.dumps({"two": {**info["two"], "file_sha1": "0" * 40}}))
    with pytest.raises(InvalidInputError, match="the file changed"):
        import_folder(engine=runtime.engine, paths=runtime.paths, settings=runtime.settings, folder=root)


def test_unsafe_archives_are_refused(client: TestClient, tmp_path: Path) -> None:
    def tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w:gz") as tf:
            tf.addfile(member, io.BytesIO(data) if data else None)
        return out.getvalue()

    link = tarfile.TarInfo("data/faq.json")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    escape = tarfile.TarInfo("../dataset_info.json")
    escape.size = 2
    cases = {"link.tar.gz": (tar_with(link), "not a plain file"),
             "escape.tar.gz": (tar_with(escape, b"{}"), "outside the archive's folder"),
             "plain.json": (b"{}", "not a zip or tar archive")}
    for name, (content, words) in cases.items():
        res = client.post("/api/datasets/import-lf", files={"file": (name, content)})
        assert res.status_code == 422 and words in res.json()["detail"], (name, res.text)
    assert client.get("/api/datasets").json() == []
    assert not (tmp_path / "etc").exists()


def test_a_tar_upload_with_names_and_the_cli(client: TestClient, data_dir: Path, tmp_path: Path) -> None:
    from test_cli import appliance

    root = write_folder(tmp_path / "d")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        tf.add(root, arcname=".")
    res = client.post("/api/datasets/import-lf", files={"file": ("data.tar.gz", out.getvalue())},
                      data={"names": ["support_chats"]})
    assert res.status_code == 201 and [i["lf_name"] for i in res.json()] == ["support_chats"], res.text
    bad = appliance(data_dir, "datasets", "import-lf", str(root), "--name", "faq_alpaca", "--name", "missing")
    assert bad.returncode == 1 and "field missing: no dataset 'missing'" in bad.stderr
    ok = appliance(data_dir, "datasets", "import-lf", str(root), "--name", "faq_alpaca")
    assert ok.returncode == 0, ok.stderr
    [item] = json.loads(ok.stdout)
    assert (item["lf_name"], item["dataset"]["rows"]) == ("faq_alpaca", 3)
