"""Training inputs that other trainers silently dropped or ignored (cases 06, 08, 09), through the API
and the real worker on the bundled model and tiny local models: rows past the cutoff are named in the
run's log, record and events; a LoRA target is honoured or refused before queueing; the chat template
used in training is recorded and carried by the merged folder, the GGUF and the Modelfile."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import pytest
import tiny_models
import yaml
from conftest import make_settings
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from appliance.api.app import create_app
from appliance.bootstrap import Runtime, bootstrap
from appliance.db.tables import Event
from appliance.models.inspect import read_chat_template
from appliance.models.registry import BUNDLED_ID, import_model
from appliance.models.templates import CHATML
from appliance.worker.worker import Worker

CASES = Path(__file__).resolve().parent / "cases"


class Box:
    """A data dir with the bundled model, an API client and an in-process worker."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.runtime: Runtime = bootstrap(make_settings(data_dir))
        self.client = TestClient(create_app(runtime=self.runtime))
        self.client.headers["Authorization"] = "Bearer test-admin-token"
        self.worker = Worker(self.runtime)

    def dataset(self, file: Path) -> str:
        res = self.client.post("/api/datasets", files={"file": (file.name, file.read_bytes())})
        assert res.status_code in (200, 201), res.text
        return str(res.json()["id"])

    def create(self, dataset_id: str, config: dict[str, Any], expect: int = 201, **body: Any) -> dict[str, Any]:
        res = self.client.post("/api/runs", json={"dataset_id": dataset_id, "config": config, **body})
        assert res.status_code == expect, res.text
        return dict(res.json())

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/api/runs/{run_id}").json())

    def drive(self, done: Any, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "timed out"
            self.worker.run_once()
            time.sleep(0.05)

    def train(self, run_id: str) -> dict[str, Any]:
        self.drive(lambda: self.run(run_id)["status"] in ("succeeded", "failed"))
        run = self.run(run_id)
        assert run["status"] == "succeeded", run["error"]
        return run

    def export(self, **body: Any) -> dict[str, Any]:
        res = self.client.post("/api/artifacts/export", json=body)
        assert res.status_code == 202, res.text
        art_id = res.json()["id"]
        self.drive(lambda: self.client.get(f"/api/artifacts/{art_id}").json()["status"] in ("ready", "failed"))
        art = dict(self.client.get(f"/api/artifacts/{art_id}").json())
        assert art["status"] == "ready", art
        return art

    def close(self) -> None:
        self.client.close()
        self.runtime.engine.dispose()


@pytest.fixture
def box(data_dir: Path) -> Iterator[Box]:
    b = Box(data_dir)
    yield b
    b.close()


def case_config(name: str, **changes: Any) -> dict[str, Any]:
    config = yaml.safe_load((CASES / name).read_text())
    assert isinstance(config, dict)
    return {**config, **changes}


def refusal(res: Any, field: str) -> str:
    assert res.status_code == 422, res.text
    assert [e["field"] for e in res.json()["errors"]] == [field], res.text
    return str(res.json()["detail"])


# --- case 06: rows past cutoff_len ---------------------------------------------------------------


def test_case06_rows_cut_or_dropped_are_named_in_the_log_record_and_events(box: Box) -> None:
    ds = box.dataset(CASES / "long_rows.jsonl")
    run = box.create(ds, case_config("long_rows_run.yaml", max_steps=2, save_steps=2), base_model_id=BUNDLED_ID)
    done = box.train(run["id"])
    report = done["data_report"]
    assert (report["rows"], report["used"], report["cutoff_len"]) == (6, 5, 256)
    assert (report["truncated_count"], report["dropped_count"]) == (1, 1)
    assert [n["row"] for n in report["truncated"]] == [3] and [n["row"] for n in report["dropped"]] == [5]
    assert report["truncated"][0]["kept"] <= 256 and "user message cut" in report["truncated"][0]["detail"]
    assert "raise cutoff_len to at least" in report["dropped"][0]["detail"]
    log = box.client.get(f"/api/runs/{run['id']}/logs").text
    assert "5 of 6 rows used at cutoff_len 256; 1 truncated (row 3); 1 dropped (row 5)" in log
    assert "row 3 truncated" in log and "row 5 dropped" in log
    events = box.client.get(f"/api/runs/{run['id']}/events").text
    assert "event: data" in events and '"dropped_count": 1' in events
    with Session(box.runtime.engine) as session:
        messages = [e.message for e in session.exec(select(Event).where(Event.kind == "run.data"))]
    assert messages == ["5 of 6 rows used at cutoff_len 256: 1 truncated (rows [3]), 1 dropped (rows [5])"]


def test_a_run_with_every_row_past_its_answer_fails_saying_which(box: Box) -> None:
    ds = box.dataset(CASES / "long_rows.jsonl")
    run = box.create(ds, {"cutoff_len": 16, "max_steps": 2}, base_model_id=BUNDLED_ID)
    box.drive(lambda: box.run(run["id"])["status"] in ("succeeded", "failed"))
    done = box.run(run["id"])
    assert done["status"] == "failed"
    assert "0 of 6 rows used at cutoff_len 16; 6 dropped (row 1, 2, 3, 4, 5, 6)" in done["error"]
    assert done["data_report"]["dropped_count"] == 6


# --- case 08: LoRA targets -----------------------------------------------------------------------


def test_case08_lora_on_a_tied_lm_head_is_refused_naming_the_tie(box: Box) -> None:
    ds = box.dataset(CASES / "faq8.jsonl")
    res = box.client.post("/api/runs", json={"dataset_id": ds, "config": case_config("tied_lm_head_run.yaml")})
    detail = refusal(res, "config.lora_target")
    assert "lm_head" in detail and "tied to embed_tokens" in detail and "lora_target: all" in detail
    assert box.client.get("/api/runs").json() == []


@pytest.mark.parametrize(("target", "needle"), [
    ("q_prj,v_proj", "has no module named 'q_prj'; its linear layers: down_proj, gate_proj, k_proj, o_proj, q_proj"),
    ("q_proj,embed_tokens", "LoRA on the embeddings (embed_tokens) is not supported"),
    ("input_layernorm", "'input_layernorm' is not a linear layer"),
], ids=["typo", "embeddings", "a norm"])
def test_a_lora_target_that_would_not_be_honoured_is_refused_before_queueing(box: Box, target: str,
                                                                             needle: str) -> None:
    ds = box.dataset(CASES / "faq8.jsonl")
    res = box.client.post("/api/runs", json={"dataset_id": ds, "base_model_id": BUNDLED_ID,
                                             "config": {"lora_target": target}})
    assert needle in refusal(res, "config.lora_target")
    assert box.client.get("/api/runs").json() == []


def test_module_paths_match_as_peft_matches_them(box: Box) -> None:
    ds = box.dataset(CASES / "faq8.jsonl")
    run = box.create(ds, {"lora_target": "self_attn.q_proj, v_proj"}, base_model_id=BUNDLED_ID)
    assert run["status"] == "queued"


def test_lm_head_of_an_untied_model_trains_merges_and_exports(box: Box, tmp_path: Path) -> None:
    folder = tiny_models.build("llama", tmp_path / "tiny-llama", box.data_dir / "models" / BUNDLED_ID / "hf")
    model = import_model(engine=box.runtime.engine, paths=box.runtime.paths, source=folder, model_id="tiny-llama")
    ds = box.dataset(CASES / "faq8.jsonl")
    run = box.create(ds, {"lora_target": "q_proj,lm_head", "max_steps": 3, "learning_rate": 1e-2, "cutoff_len": 64,
                          "warmup_ratio": 0.0}, base_model_id=model.id)
    box.train(run["id"])
    from safetensors.torch import load_file

    weights = load_file(str(box.runtime.paths.run_dir(run["id"]) / "adapter" / "adapter_model.safetensors"))
    head_b = [v for k, v in weights.items() if "lm_head.lora_B" in k]
    assert head_b and float(head_b[0].abs().max()) > 0  # the head's LoRA trained (B starts at zero)
    f16 = box.export(run_id=run["id"], type="f16")  # merged: output.weight carries the head's delta
    assert f16["verification"]["next_token_top1"] == 1.0, f16["verification"]
    adapter = box.export(run_id=run["id"], kind="gguf-adapter")
    names = {t.name for t in gguf.GGUFReader(box.data_dir / "artifacts" / adapter["id"] / adapter["file"]).tensors}
    assert "output.weight.lora_b" in names
    assert adapter["verification"]["next_token_top1"] == 1.0, adapter["verification"]


# --- case 09: chat templates ---------------------------------------------------------------------


def no_template_model(box: Box, tmp_path: Path) -> str:
    """What the case's make_model.sh makes: the bundled model's folder without any chat template."""
    src, dst = box.data_dir / "models" / BUNDLED_ID / "hf", tmp_path / "smollm2-notemplate"
    dst.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors", "generation_config.json"):
        os.link(src / name, dst / name)
    config = json.loads((src / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    assert read_chat_template(dst) is None
    model = import_model(engine=box.runtime.engine, paths=box.runtime.paths, source=dst, model_id="smollm2-notemplate")
    assert model.id == "smollm2-notemplate" and not model.has_chat_template
    return model.id


def test_case09_a_model_without_a_template_needs_one_named_and_every_export_carries_it(box: Box,
                                                                                       tmp_path: Path) -> None:
    no_template_model(box, tmp_path)
    ds = box.dataset(CASES / "faq8.jsonl")
    unnamed = {k: v for k, v in case_config("no_template_run.yaml").items() if k != "template"}
    res = box.client.post("/api/runs", json={"dataset_id": ds, "config": unnamed})
    detail = refusal(res, "config.template")
    assert "'smollm2-notemplate' has no chat template" in detail and "template: chatml" in detail
    run = box.create(ds, case_config("no_template_run.yaml", max_steps=2, save_steps=2, cutoff_len=64))
    assert (run["chat_template_name"], run["chat_template"]) == ("chatml", CHATML)
    box.train(run["id"])
    spec = json.loads((box.runtime.paths.run_dir(run["id"]) / "spec.json").read_text())
    assert spec["chat_template"] == CHATML  # what the trainer rendered with
    art = box.export(run_id=run["id"], type="q8_0")
    reader = gguf.GGUFReader(box.data_dir / "artifacts" / art["id"] / art["file"])
    assert reader.fields["tokenizer.chat_template"].contents() == CHATML
    merged = [a for a in box.client.get("/api/artifacts").json() if a["kind"] == "merged"][0]
    folder = box.data_dir / "artifacts" / merged["id"]
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == CHATML
    assert read_chat_template(folder) == CHATML
    modelfile = box.client.get(f"/api/artifacts/{art['id']}/modelfile").text
    assert 'TEMPLATE """{{- if .System }}<|im_start|>system' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "SYSTEM" not in modelfile
    # A GGUF adapter would be served on the base GGUF, which has no template: refused, saying why.
    res = box.client.post("/api/artifacts/export", json={"run_id": run["id"], "kind": "gguf-adapter"})
    assert "trained with the chatml chat template" in refusal(res, "kind")


def test_the_template_is_the_models_own_unless_one_is_named(box: Box) -> None:
    ds = box.dataset(CASES / "faq8.jsonl")
    own = box.create(ds, {}, base_model_id=BUNDLED_ID)
    hf = box.data_dir / "models" / BUNDLED_ID / "hf"
    assert (own["chat_template_name"], own["chat_template"]) == ("model", read_chat_template(hf))
    named = box.create(ds, {"template": "ChatML"}, base_model_id=BUNDLED_ID)
    assert (named["chat_template_name"], named["chat_template"]) == ("chatml", CHATML)
    res = box.client.post("/api/runs", json={"dataset_id": ds, "base_model_id": BUNDLED_ID,
                                             "config": {"template": "llama2"}})
    detail = refusal(res, "config.template")
    assert "template 'llama2' is not one the appliance can apply; known: chatml" in detail
